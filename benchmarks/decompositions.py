"""Decompositions side by side: every dictionary family on the same cached activations, plus their peers.

Sections (``--sections``, all by default):

``families``  Each family trains through ``featurelens train``'s own code path (``train_on_store``) on the
              same store, hook and held-out tail, and is then ranked by the league table
              (``featurelens compare-dictionaries``) on the same held-out text spliced into the model:
              tokens/s of training, held-out FVU, L0, dead, CE loss recovered. A TopK transcoder
              (``mlp_in`` -> ``mlp_out``), semi-NMF of the MLP neurons and the gradient-aware TopK SAE
              (trained live: it needs the model's gradient) join the table when this featurelens has them.
``mp-peer``   Matching pursuit against SAELens' ``MatchingPursuitSAE``: the same decoder encodes the same
              held-out rows through both (the codes must agree), and each library's trainer trains one MP-SAE
              on the same batch stream (tokens/s, held-out FVU).
``semi-nmf``  The streaming semi-NMF fit against Ding, Li & Jordan's full-batch multiplicative updates
              (the algorithm the semi-NMF paper uses), on MLP neurons that fit in memory: time and objective.

Reproduce (~25 minutes on a quiet 2-core CPU after a ~6 minute capture; the project's test extra holds
sae-lens)::

    pip install -e '.[test]'
    featurelens capture --model smollm2 --hook layers.15.resid_post --hook layers.15.mlp_in \\
        --hook layers.15.mlp_out --hook layers.15.mlp_neurons --tokens 200000 --out /tmp/decomp/acts
    python benchmarks/decompositions.py --store /tmp/decomp/acts --out /tmp/decomp \\
        --figure docs/images/league.png

The table is also written to benchmarks/results/decompositions.txt.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, matmul_peak_gflops, vector_flags, versions
from train import Spec, TimedStream, Trained, batch_stream, evaluate, heldout_rows, split_store

from featurelens import ActivationStore
from featurelens.dictionaries import ARCHITECTURES, MatchingPursuitDictionary
from featurelens.evaluate.league import LeagueJob, league_table, save_league
from featurelens.training import TrainConfig, train_dictionary
from featurelens.training.from_store import StoreTraining, is_finished, train_on_store

RESULTS = Path(__file__).resolve().parent / "results" / "decompositions.txt"
LAYER = 15


@dataclasses.dataclass(frozen=True)
class Family:
    """One row of the table: a name, its training options, and the hooks it reads and writes."""

    name: str
    arch: str
    options: dict[str, Any]
    hook_in: str = f"layers.{LAYER}.resid_post"
    hook_out: str | None = None


def families(k: int, expansion: int) -> list[Family]:
    """The families this featurelens has, each at the usual settings for its kind."""
    penalty = {"expansion": expansion, "target_l0": 2 * k}
    rows = [
        Family("topk", "topk", {"k": k, "expansion": expansion}),
        Family("batchtopk", "batchtopk", {"k": k, "expansion": expansion}),
        Family("matryoshka", "matryoshka", {"k": k, "expansion": expansion}),
        Family("relu", "relu", penalty),
        Family("jumprelu", "jumprelu", penalty),
        Family("mp", "mp", {"k": k, "expansion": expansion}),
        # unused codes are re-initialised once unused this long (the default 1M is beyond this run)
        Family("codebook", "codebook", {"k": k, "expansion": expansion, "dead_after_tokens": 50_000}),
        Family(
            "transcoder",
            "topk",
            {"k": k, "expansion": expansion},
            hook_in=f"layers.{LAYER}.mlp_in",
            hook_out=f"layers.{LAYER}.mlp_out",
        ),
        Family("seminmf", "seminmf", {"k": k, "latents": 512}, hook_in=f"layers.{LAYER}.mlp_neurons"),
    ]
    return [family for family in rows if family.arch in ARCHITECTURES]


def train_family(family: Family, store: Path, out: Path, epochs: int, batch_size: int, reuse: bool) -> Path:
    """Train one family exactly as ``featurelens train --acts`` would; returns its folder.

    With ``reuse`` a folder whose training finished is kept as it is (its training.json has its speed).
    """
    if reuse and is_finished(out / family.name):
        return out / family.name
    config = TrainConfig(
        arch=family.arch,
        batch_size=batch_size,
        hook_in=family.hook_in,
        hook_out=family.hook_out,
        **family.options,
    )
    job = StoreTraining(acts=str(store), out=str(out / family.name), epochs=epochs, overwrite=True)
    return train_on_store(job, [config])[0].path


def train_gradient_family(out: Path, k: int, expansion: int, tokens: int, batch_size: int) -> Path | None:
    """The gradient-aware TopK SAE trained live on the bundled model (None where featurelens has none)."""
    if "gtopk" not in ARCHITECTURES:
        return None
    from featurelens.training.live import LiveTraining, train_live

    config = TrainConfig(
        arch="gtopk", k=k, expansion=expansion, batch_size=batch_size, hook_in=f"layers.{LAYER}.resid_post"
    )
    job = LiveTraining(model="smollm2", tokens=tokens, out=str(out / "gtopk"), overwrite=True)
    return train_live(job, [config])[0].path


def families_section(args: argparse.Namespace) -> str:
    out = Path(args.out) / "families"
    folders = []
    for family in families(args.k, args.expansion):
        print(f"training {family.name} ...", flush=True)
        folders.append(train_family(family, Path(args.store), out, args.epochs, args.batch_size, args.reuse))
    if args.gradient_tokens and args.reuse and is_finished(out / "gtopk"):
        folders.append(out / "gtopk")
    elif args.gradient_tokens:
        print("training gtopk live ...", flush=True)
        gradient = train_gradient_family(out, args.k, args.expansion, args.gradient_tokens, args.batch_size)
        folders += [gradient] if gradient else []
    print("league table ...", flush=True)
    table = league_table(LeagueJob(folders=tuple(map(str, folders)), tokens=args.league_tokens))
    league = save_league(table, out / "league")
    if args.figure:
        shutil.copyfile(league / "pareto.png", args.figure)
    lines = [
        f"Families on {args.store} (layer {LAYER}); each trained {args.epochs} epoch(s) of the store's "
        f"training rows with batch {args.batch_size}; league on {args.league_tokens} held-out tokens",
        "",
        f"{'dictionary':<12} {'arch':<11} {'hook':<42} {'latents':>7} {'tok/s':>7} {'FVU':>6} {'L0':>7} "
        f"{'dead':>6} {'CE rec':>7} {'KL':>7}",
    ]
    for row in table.to_pylist():
        rate = row["training_tokens"] / row["training_seconds"] if row["training_seconds"] else float("nan")
        lines.append(
            f"{row['dictionary']:<12} {row['arch']:<11} {row['hook']:<42} {row['latents']:>7} {rate:>7.0f} "
            f"{row['fvu']:>6.3f} {row['l0']:>7.1f} {row['dead_fraction']:>6.1%} "
            f"{row['ce_loss_recovered']:>7.3f} {row['kl_to_clean']:>7.3f}"
        )
    lines += [
        "",
        "tok/s: training tokens / training wall time from each folder's training.json (gtopk: live, the "
        "model's forward and backward included).",
        "FVU, L0, dead: on the league's held-out tokens, spliced into the model. CE rec: CE loss recovered "
        "(1 = the clean model's loss, 0 = the layer's mean ablation); KL: to the clean next-token "
        "distribution.",
        "Hooks differ per row: each row's FVU is of its own hook.",
    ]
    return "\n".join(lines)


# -- matching pursuit vs SAELens ----------------------------------------------------------------------


def saelens_mp_encoder(dictionary: MatchingPursuitDictionary) -> Callable[[torch.Tensor], torch.Tensor]:
    """SAELens' inference MatchingPursuitSAE holding ``dictionary``'s decoder: k steps, no early stop."""
    from sae_lens.saes.matching_pursuit_sae import MatchingPursuitSAE, MatchingPursuitSAEConfig

    sae = MatchingPursuitSAE(
        MatchingPursuitSAEConfig(
            d_in=dictionary.d_in,
            d_sae=dictionary.d_latent,
            residual_threshold=0.0,
            max_iterations=dictionary.k,
            stop_on_duplicate_support=False,
            dtype="float32",
            device="cpu",
        )
    )
    with torch.no_grad():
        sae.W_dec.copy_(dictionary.W_dec)
        sae.b_dec.copy_(dictionary.b_dec)
    return sae.encode


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def mp_spec(args: argparse.Namespace, scratch: Path) -> Spec:
    """The shared batch stream of the MP comparison: the store less its last shard, which is held out."""
    hook = f"layers.{LAYER}.resid_post"
    store = ActivationStore.open(args.store)
    train_view, heldout_view = split_store(Path(args.store), 1, scratch)
    outliers = store.manifest["outliers"]
    return Spec(
        train_store=str(train_view),
        heldout_store=str(heldout_view),
        hook=hook,
        d_model=int(store.manifest["hooks"][hook]["width"]),
        max_norm=outliers["multiple"] * outliers["median_norm"][hook],
        batch_size=args.batch_size,
        steps=args.mp_steps,
        k=args.k,
        expansion=args.expansion,
        lr=1e-3,
        warmup_steps=min(50, args.mp_steps // 5),
        decay_fraction=0.2,
        seed=0,
        scratch=str(scratch),
    )


def train_featurelens_mp(spec: Spec, stream: TimedStream) -> tuple[Trained, MatchingPursuitDictionary]:
    config = TrainConfig(
        arch="mp",
        k=spec.k,
        expansion=spec.expansion,
        batch_size=spec.batch_size,
        steps=spec.steps,
        lr=spec.lr,
        warmup_steps=spec.warmup_steps,
        decay_fraction=spec.decay_fraction,
    )
    dictionary = train_dictionary(config, stream).dictionary
    assert isinstance(dictionary, MatchingPursuitDictionary)
    return Trained(dictionary.forward, dictionary.encode, notes=""), dictionary


def train_saelens_mp(spec: Spec, stream: TimedStream) -> tuple[Trained, None]:
    from sae_lens import SAETrainer
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.matching_pursuit_sae import (
        MatchingPursuitTrainingSAE,
        MatchingPursuitTrainingSAEConfig,
    )

    sae = MatchingPursuitTrainingSAE(
        MatchingPursuitTrainingSAEConfig(
            d_in=spec.d_model,
            d_sae=spec.expansion * spec.d_model,
            residual_threshold=0.0,
            max_iterations=spec.k,
            stop_on_duplicate_support=False,
            dtype="float32",
            device="cpu",
            normalize_activations="expected_average_only_in",
        )
    )
    config = SAETrainerConfig(
        total_training_samples=spec.steps * spec.batch_size,
        train_batch_size_samples=spec.batch_size,
        lr=spec.lr,
        lr_end=spec.lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=spec.warmup_steps,
        lr_decay_steps=int(spec.decay_fraction * spec.steps),
        device="cpu",
        n_batches_for_norm_estimate=10,
    )
    # the norm estimate reads a fresh copy of the first batches, so training sees the whole stream
    provider = itertools.chain(itertools.islice(batch_stream(spec), 10), iter(stream))
    trained = SAETrainer(cfg=config, sae=sae, data_provider=provider).fit()
    trained.eval()
    return Trained(trained.forward, trained.encode), None


def mp_peer_section(args: argparse.Namespace) -> str:
    scratch = Path(tempfile.mkdtemp(prefix="bench-mp-"))
    try:
        spec = mp_spec(args, scratch)
        heldout = heldout_rows(spec)[: args.mp_rows]
        lines = [
            f"Matching pursuit (k={spec.k}, {spec.expansion * spec.d_model} latents on {spec.hook}, "
            f"d={spec.d_model}) against SAELens {metadata.version('sae-lens')}",
            "",
            f"{'training':<12} {'tok/s':>7} {'vs fl':>6} {'FVU':>6} {'dead':>6} {'L0':>5}",
        ]
        trained: dict[str, Trained] = {}
        ours: MatchingPursuitDictionary | None = None
        rates = {}
        for name, train in (("featurelens", train_featurelens_mp), ("SAELens", train_saelens_mp)):
            print(f"training mp with {name} ...", flush=True)
            torch.manual_seed(0)
            stream = TimedStream(spec)
            started = time.perf_counter()
            trained[name], dictionary = train(spec, stream)  # type: ignore[operator]
            ours = dictionary if dictionary is not None else ours
            rates[name] = spec.batch_size * len(stream.pulls) / (time.perf_counter() - started)
            fvu, dead, l0 = evaluate(trained[name], heldout)
            lines.append(
                f"{name:<12} {rates[name]:>7.0f} {rates[name] / rates['featurelens']:>5.2f}x "
                f"{fvu:>6.3f} {dead:>6.1%} {l0:>5.1f}"
            )
        # encoding: featurelens' trained decoder inside both libraries' pursuit, the same rows
        assert ours is not None
        ours = copy.deepcopy(ours)
        ours.fold_scale_()  # raw activations in, as SAELens' encoder takes them
        theirs = saelens_mp_encoder(ours)
        with torch.no_grad():
            ours_codes, their_codes = ours.encode(heldout), theirs(heldout)
            ours_s = best_seconds(lambda: ours.encode(heldout), args.repeats)
            their_s = best_seconds(lambda: theirs(heldout), args.repeats)
        gap = float((ours_codes - their_codes).abs().max() / their_codes.abs().max())
        same = float(((ours_codes != 0) == (their_codes != 0)).all(1).float().mean())
        lines += [
            "",
            f"{'encoding':<12} {'rows/s':>8} {'vs fl':>6}",
            f"{'featurelens':<12} {len(heldout) / ours_s:>8.0f} {1.0:>5.2f}x",
            f"{'SAELens':<12} {len(heldout) / their_s:>8.0f} {ours_s / their_s:>5.2f}x",
            "",
            f"Same decoder, {len(heldout)} held-out rows: identical support on {same:.1%} of rows, largest "
            f"code difference {gap:.1e} of the largest code (float32 rounding can flip a near-tie).",
            "featurelens updates the correlations through the atoms' Gram matrix (n x d_latent per step); "
            "SAELens recomputes residual @ W_dec.T (n x d x d_latent) at each of the k steps.",
            "Training: each library's own trainer and schedule on the same batch stream; tok/s over the "
            "whole call; FVU, dead and L0 on the held-out rows.",
        ]
        return "\n".join(lines)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# -- semi-NMF: streaming vs the paper's full-batch algorithm -------------------------------------------


def semi_nmf_section(args: argparse.Namespace) -> str:
    from featurelens.dictionaries.semi_nmf import SemiNMFDictionary, semi_nmf_full_batch, semi_nmf_objective
    from featurelens.training.semi_nmf import fit_semi_nmf

    hook = f"layers.{LAYER}.mlp_neurons"
    x = torch.from_numpy(
        np.asarray(ActivationStore.open(args.store).activations(hook)[: args.nmf_rows])
    ).float()
    variance = float((x.double() - x.double().mean(0)).square().sum())
    n_features = args.nmf_features
    print(f"semi-NMF full batch ({args.nmf_iterations} iterations) ...", flush=True)
    started = time.perf_counter()
    directions, codes = semi_nmf_full_batch(x, n_features, iterations=args.nmf_iterations, seed=0)
    full_seconds = time.perf_counter() - started
    full = float(semi_nmf_objective(x, codes, directions)) / variance
    lines = [
        f"Semi-NMF of {hook} ({len(x)} rows x {x.shape[1]} neurons in memory, {n_features} features, dense "
        "codes as in the paper)",
        "",
        f"{'fit':<34} {'seconds':>8} {'rows/s':>8} {'objective/var':>14} {'vs full':>8}",
        f"{'paper full batch (Ding et al. MU)':<34} {full_seconds:>8.1f} "
        f"{len(x) * args.nmf_iterations / full_seconds:>8.0f} {full:>14.4f} {1.0:>7.3f}x",
    ]
    for passes in args.nmf_passes:
        dictionary = SemiNMFDictionary(x.shape[1], n_features, k=None)
        print(f"semi-NMF streaming, {passes} passes ...", flush=True)
        started = time.perf_counter()
        fit_semi_nmf(dictionary, x[: min(len(x), 32_768)], lambda: x.split(args.batch_size), passes, seed=0)
        seconds = time.perf_counter() - started
        with torch.no_grad():
            ours = float(semi_nmf_objective(x, dictionary.encode(x), dictionary.W_dec)) / variance
        lines.append(
            f"{f'featurelens streaming, {passes} passes':<34} {seconds:>8.1f} "
            f"{len(x) * passes / seconds:>8.0f} {ours:>14.4f} {ours / full:>7.3f}x"
        )
    lines += [
        "",
        "objective/var: ||X - H F||^2 over the rows' total variance (an FVU without centring the fit). "
        "rows/s: rows x iterations (passes) / seconds.",
        "The full-batch fit is semi_nmf_full_batch: Ding, Li & Jordan's multiplicative updates from k-means, "
        "written from the paper's equations in float64 (also the tests' reference).",
        "The streaming fit holds one batch at a time (sufficient statistics in float64), as over a store "
        "larger than memory; its codes are encode()'s exact non-negative least squares.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="/tmp/decomp/acts")
    parser.add_argument("--out", default="/tmp/decomp")
    parser.add_argument("--sections", default="families,mp-peer,semi-nmf")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--league-tokens", type=int, default=10_000)
    parser.add_argument("--gradient-tokens", type=int, default=40_000, help="0 leaves gtopk out")
    parser.add_argument("--mp-steps", type=int, default=40)
    parser.add_argument("--mp-rows", type=int, default=8192, help="held-out rows the encoders compare on")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nmf-rows", type=int, default=20_000, help="MLP-neuron rows the semi-NMF fits hold")
    parser.add_argument("--nmf-features", type=int, default=256)
    parser.add_argument("--nmf-iterations", type=int, default=200, help="of the paper's full-batch algorithm")
    parser.add_argument("--nmf-passes", type=int, nargs="+", default=[5, 20], help="of the streaming fit")
    parser.add_argument("--figure", help="copy the league's pareto.png here")
    parser.add_argument("--reuse", action="store_true", help="keep families whose training already finished")
    args = parser.parse_args()
    peak = matmul_peak_gflops()
    parts = [describe(peak), vector_flags(), versions(("featurelens", "torch", "sae-lens"))]
    sections = {"families": families_section, "mp-peer": mp_peer_section, "semi-nmf": semi_nmf_section}
    for name in args.sections.split(","):
        parts.append(sections[name](args))
        print(parts[-1], flush=True)
    RESULTS.write_text("\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
