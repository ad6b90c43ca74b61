"""Convert a dictionary folder between formats: featurelens, SAELens, sparsify.

Reads any of the three (only safetensors and JSON) and writes the one --format names, e.g. to load a
featurelens SAE with SAELens' ``SAE.load_from_disk`` or to bring a SAELens or sparsify SAE into featurelens.
Hook names are translated (featurelens ``layers.15.resid_post`` is TransformerLens
``blocks.15.hook_resid_post`` and sparsify ``layers.15``).

examples:
  featurelens export runs/demo/sae --format saelens --out runs/demo/sae-saelens
  featurelens export path/to/saelens_sae --format featurelens --out runs/imported/sae
"""

from __future__ import annotations

import argparse
from pathlib import Path

from featurelens.dictionaries.base import Dictionary, DictionaryError
from featurelens.dictionaries.formats import FORMATS

HELP = "convert a dictionary to the SAELens, sparsify or featurelens format"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="dictionary folder in any supported format")
    parser.add_argument("--format", choices=FORMATS, required=True, help="format to write")
    parser.add_argument("--out", required=True, help="folder to write (must not hold files already)")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise DictionaryError(f"{out} already holds files; choose an empty or new --out")
    dictionary = Dictionary.load(args.path)
    written = dictionary.save(out, format=args.format)
    shape = f"{dictionary.d_in} -> {dictionary.d_latent} latents"
    print(f"wrote {dictionary.arch} dictionary ({shape}) in {args.format} format to {written}")
    return 0
