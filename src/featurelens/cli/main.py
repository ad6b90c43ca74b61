"""Entry point: ``featurelens <verb> ...``. Errors print one line and exit 2; Ctrl-C exits 130."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from featurelens import distributed
from featurelens.cli import (
    atlas,
    capture,
    circuit,
    compare,
    compare_dictionaries,
    encode,
    evaluate,
    explain,
    export,
    function_vector,
    hooks,
    info,
    neurons,
    probe,
    run,
    serve,
    show,
    steer,
    train,
)
from featurelens.errors import FeatureLensError

VERBS = {
    "run": run,
    "capture": capture,
    "train": train,
    "evaluate": evaluate,
    "atlas": atlas,
    "explain": explain,
    "circuit": circuit,
    "steer": steer,
    "function-vector": function_vector,
    "neurons": neurons,
    "probe": probe,
    "encode": encode,
    "compare": compare,
    "compare-dictionaries": compare_dictionaries,
    "show": show,
    "serve": serve,
    "export": export,
    "hooks": hooks,
    "info": info,
}

DESCRIPTION = """\
featurelens looks inside neural networks.

The loop, one verb per stage:
  run       the whole job on the bundled defaults (SmolLM2-135M on Python's own docs)
  capture   record hidden activations of any HF model into an on-disk store
  train     train sparse dictionaries (TopK/BatchTopK/JumpReLU/ReLU SAEs, transcoders) on a store
  evaluate  measure a dictionary: FVU, L0, dead latents, the model's loss with it spliced in
  compare-dictionaries  a league table of dictionaries on the same held-out tokens, with a Pareto plot
  atlas     map every feature: densities, top contexts, logit effects, neighbours (SQLite)
  explain   explain features (baseline or an LLM) and score them on held-out examples
  steer     make a steering vector from contrastive prompts and steer generation with it
  function-vector  find the heads behind an in-context task; add its vector to zero-shot prompts
  neurons   report dead, dense, outlier, massive, token and positional units of every layer
  probe     dense and k-sparse probes of a layer for token predicates, labels or positions
  encode    encoding models: cross-validated ridge from activations to recordings, ceilings, nulls
  compare   layer x layer similarity maps (CKA, RSA, CCA, shape, kNN) within and across models, with nulls
  circuit   find the heads and neurons behind a task: patching, attribution, faithfulness, edges
  show      a feature card, an atlas overview or a search, in the terminal
  serve     browse an atlas in a local web app: search, feature pages, try text, steer
  export    convert a dictionary to SAELens or sparsify format (and back)
  hooks     list a model's hook points with their shapes
  info      summarise an activation store
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featurelens", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--verbose", action="store_true", help="log progress details and show tracebacks")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, module in VERBS.items():
        sub = verbs.add_parser(
            name,
            help=module.HELP,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(handler=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `--workers` relaunches the same command
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    logging.getLogger("featurelens").setLevel(logging.INFO)  # one-off notes such as the GGUF conversion
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # retries would print multi-line noise
    try:
        return int(args.handler(args) or 0)
    except FeatureLensError as error:
        if args.verbose:
            raise
        message, world = str(error), distributed.launched_world()
        if world is not None and world.size > 1:
            distributed.record_error(message)
            if distributed.report_to_launcher():  # the launcher prints the failing rank's line
                return 2
            message = f"rank {world.rank}: {message}"
        print(f"featurelens {args.verb}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"featurelens {args.verb}: interrupted; finished work is kept, rerun with --resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
