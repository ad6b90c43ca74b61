"""The corpus flags shared by every verb that reads text itself (--corpus, --text-field, --split)."""

from __future__ import annotations

import argparse

from featurelens.corpus import CorpusConfig

CORPUS_HELP = "bundled (Python docs), a .txt/.jsonl/.parquet file or folder, or hf:<dataset>"


def add_corpus_arguments(parser: argparse.ArgumentParser, corpus_help: str = CORPUS_HELP) -> None:
    parser.add_argument("--corpus", default="bundled", help=corpus_help)
    parser.add_argument(
        "--text-field", default="text", help="field/column holding the text in jsonl, parquet, datasets"
    )
    parser.add_argument("--split", default="train", help="dataset split for hf: corpora")


def corpus_from_args(args: argparse.Namespace) -> CorpusConfig:
    return CorpusConfig(spec=args.corpus, text_field=args.text_field, split=args.split)
