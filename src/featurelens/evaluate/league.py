"""One league table: several dictionaries of one model measured on the same held-out tokens.

Every dictionary is spliced into the same model on the same sequences — the corpus after the most tokens any
of them was trained on — so their FVU, L0, dead and dense fractions, CE loss recovered and KL compare like
with like; training tokens and wall time come from each folder's ``training.json``. Output (written under a
temporary name, renamed when whole)::

    league.parquet, league.csv   one row per dictionary
    pareto.png                   FVU and CE loss recovered against L0, one labelled point per dictionary
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from featurelens.corpus import CorpusConfig
from featurelens.dictionaries.base import Dictionary, DictionaryError
from featurelens.evaluate.live import evaluate_in_model, heldout_sequences
from featurelens.folders import check_output_folder, staged_folder
from featurelens.models import load_model
from featurelens.paths import RemotePath, location, readable
from featurelens.training.from_store import read_training

MARKER = "league.parquet"


@dataclass(frozen=True)
class LeagueJob:
    """The dictionaries to rank and how; the CLI maps its flags onto these fields one to one."""

    folders: tuple[str, ...]
    tokens: int = 20_000
    batch_size: int = 8
    with_loss: bool = True
    model: str | None = None
    corpus: str | None = None
    seq_len: int | None = None
    device: str | None = None
    out: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.folders:
            raise DictionaryError("give at least one dictionary folder")
        if self.tokens < 1 or self.batch_size < 1:
            raise DictionaryError("--tokens and --eval-batch-size must be positive")


@dataclass(frozen=True)
class Entry:
    """One dictionary of the table with its training record (empty when trained elsewhere)."""

    name: str
    path: Path | RemotePath
    dictionary: Dictionary
    training: dict[str, Any]


def _entries(folders: tuple[str, ...]) -> list[Entry]:
    paths = [location(folder) for folder in folders]
    names = [path.name for path in paths]
    if len(set(names)) < len(names):  # two folders called "sae": name them by their parent too
        names = [f"{path.parent.name}/{path.name}" for path in paths]
    local = [readable(path) for path in paths]  # a remote folder's JSON and safetensors, in the cache
    return [
        Entry(name, path, Dictionary.load(copy), read_training(copy) or {})
        for name, path, copy in zip(names, paths, local, strict=True)
    ]


def _shared(entries: list[Entry], key: str, given: Any) -> Any:
    """The value of ``key`` every training record agrees on (``given`` wins); one line if they differ."""
    if given is not None:
        return given
    values = {repr(e.training[key]) for e in entries if key in e.training}
    if len(values) > 1:
        raise DictionaryError(
            f"the dictionaries were trained with different {key}s ({', '.join(sorted(values))}); "
            f"a league compares dictionaries of one model on one text: pass --{key.replace('_', '-')}"
        )
    return next((e.training[key] for e in entries if key in e.training), None)


def league_table(job: LeagueJob, on_dictionary: Callable[[str], None] | None = None) -> pa.Table:
    """Every dictionary of ``job`` evaluated on the same held-out tokens: one row each."""
    entries = _entries(job.folders)
    model = _shared(entries, "model", job.model)
    if model is None:
        raise DictionaryError("no training.json says which model these dictionaries belong to; pass --model")
    corpus = CorpusConfig(spec=job.corpus) if job.corpus else None
    if corpus is None:
        trained_on = _shared(entries, "corpus", None)
        corpus = CorpusConfig(**trained_on) if trained_on else CorpusConfig()
    seq_len = int(job.seq_len or _shared(entries, "seq_len", None) or 256)
    skip = 0
    if job.corpus is None:  # held out for every dictionary: after the longest capture
        captured = [
            e.training["captured_tokens"] / e.training["seq_len"]
            for e in entries
            if "captured_tokens" in e.training
        ]
        skip = math.ceil(max(captured, default=0))
    lm = load_model(str(model), device=job.device)
    sequences = heldout_sequences(corpus, lm.tokenizer, seq_len, skip, job.tokens)
    rows: list[dict[str, Any]] = []
    for entry in entries:
        if on_dictionary is not None:
            on_dictionary(entry.name)
        training = entry.training
        evaluation = evaluate_in_model(
            entry.dictionary,
            lm,
            sequences,
            batch_size=job.batch_size,
            skip_positions=int(training.get("skip_positions", 1)),
            keep_special=bool(training.get("keep_special", False)),
            max_norm=training.get("max_norm"),
            with_loss=job.with_loss,
        )
        rec, loss = evaluation.reconstruction, evaluation.loss
        tokens, rate = training.get("tokens"), training.get("tokens_per_second")
        rows.append(
            {
                "dictionary": entry.name,
                "path": str(entry.path),
                "arch": entry.dictionary.arch,
                "hook": entry.dictionary.hook_in
                if not entry.dictionary.is_transcoder
                else f"{entry.dictionary.hook_in} -> {entry.dictionary.hook_out}",
                "latents": entry.dictionary.d_latent,
                "fvu": rec.fvu,
                "l0": rec.l0,
                "dead_fraction": rec.dead_fraction,
                "dense_fraction": rec.dense_fraction,
                "ce_loss_recovered": loss.ce_loss_recovered if loss else math.nan,
                "kl_to_clean": loss.kl_to_clean if loss else math.nan,
                "training_tokens": int(tokens) if tokens is not None else None,
                "training_seconds": tokens / rate if tokens and rate else math.nan,
                "tokens_measured": rec.n_tokens,
            }
        )
    return pa.Table.from_pylist(rows)


def check_league_out(job: LeagueJob) -> Path | None:
    """The output folder of ``job`` (None: print only), checked before any work."""
    if job.out is None:
        return None
    return check_output_folder(job.out, job.overwrite, MARKER, "league folder", DictionaryError)


def save_league(table: pa.Table, out: Path) -> Path:
    """Write the table as Parquet and CSV and the Pareto plot into ``out`` (replacing it)."""
    with staged_folder(out) as staging:
        pq.write_table(table, staging / MARKER)
        pacsv.write_csv(table, staging / "league.csv")
        draw_pareto(table, staging / "pareto.png")
    return out


def draw_pareto(table: pa.Table, path: Path) -> None:
    """FVU (lower is better) and CE loss recovered (higher is better) against L0, a labelled point each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = table.to_pydict()
    panels = [
        ("fvu", "FVU (held out; lower is better)"),
        ("ce_loss_recovered", "CE loss recovered (higher is better)"),
    ]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for axis, (column, label) in zip(axes, panels, strict=True):
        for name, l0, value in zip(data["dictionary"], data["l0"], data[column], strict=True):
            if value is not None and not math.isnan(value):
                axis.scatter(l0, value, s=36)
                axis.annotate(name, (l0, value), textcoords="offset points", xytext=(4, 4), fontsize=8)
        axis.set_xlabel("L0 (active latents per token)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    figure.suptitle(
        f"{len(data['dictionary'])} dictionaries on the same {data['tokens_measured'][0]:,} held-out tokens"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
