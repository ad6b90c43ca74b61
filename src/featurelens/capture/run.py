"""The capture loop: corpus -> packed sequences -> model (stopped early) -> shards of the activation store."""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import chain, islice
from typing import Any

import numpy as np
import torch

from featurelens import distributed
from featurelens.capture.store import (
    FORMAT,
    FORMAT_VERSION,
    STORE_DTYPES,
    ShardRows,
    StoreWriter,
    read_manifest,
    to_storage,
)
from featurelens.corpus import CorpusConfig, PackedSequence, documents, pack_sequences
from featurelens.errors import StoreError
from featurelens.models import LanguageModel, load_model
from featurelens.models.loading import MODEL_DTYPES
from featurelens.paths import location, remove

# Options that do not change what is stored: a resumed run may change them freely.
_RUNTIME_OPTIONS = ("out", "device", "batch_size", "rank", "world_size", "resume", "overwrite")


@dataclass(frozen=True)
class CaptureConfig:
    """Everything that decides a capture; the CLI maps its flags onto these fields one to one.

    ``n_tokens`` counts tokens run through the model (whole packed sequences of ``seq_len``); the store holds
    fewer rows when ``skip_positions`` or special-token exclusion drop some.
    """

    out: str = "runs/demo/acts"
    model: str = "smollm2"
    hooks: tuple[str, ...] = ("layers.15.resid_post",)
    n_tokens: int = 200_000
    seq_len: int = 256
    batch_size: int = 8
    dtype: str = "float32"
    model_dtype: str = "float32"
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    skip_positions: int = 1
    keep_special: bool = False
    shard_tokens: int = 32_768
    outlier_multiple: float = 10.0
    device: str | None = None
    rank: int = 0
    world_size: int = 1
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.n_tokens > 0, f"--tokens must be a positive number of tokens, got {self.n_tokens}"),
            (self.seq_len >= 2, f"--seq-len must be at least 2, got {self.seq_len}"),
            (self.batch_size > 0, f"--batch-size must be positive, got {self.batch_size}"),
            (self.dtype in STORE_DTYPES, f"--dtype {self.dtype!r} is not one of {', '.join(STORE_DTYPES)}"),
            (
                self.model_dtype in MODEL_DTYPES,
                f"--model-dtype {self.model_dtype!r} is not one of {', '.join(MODEL_DTYPES)}",
            ),
            (
                0 <= self.skip_positions < self.seq_len,
                f"--skip-positions must be in [0, seq_len), got {self.skip_positions}",
            ),
            (self.shard_tokens >= self.seq_len, f"--shard-tokens must be at least seq_len ({self.seq_len})"),
            (self.outlier_multiple > 1, f"--outlier-multiple must exceed 1, got {self.outlier_multiple}"),
            (
                0 <= self.rank < self.world_size,
                f"rank {self.rank} is not in [0, world_size={self.world_size})",
            ),
            (len(self.hooks) > 0, "give at least one --hook"),
        ]
        for ok, message in checks:
            if not ok:
                raise StoreError(message)

    @property
    def n_sequences(self) -> int:
        return math.ceil(self.n_tokens / self.seq_len)

    @property
    def sequences_per_shard(self) -> int:
        return self.shard_tokens // self.seq_len

    def identity(self) -> dict[str, Any]:
        """The options that decide the stored content (a resumed run must match them)."""
        options = dataclasses.asdict(self)
        return {k: v for k, v in options.items() if k not in _RUNTIME_OPTIONS}


@dataclass(frozen=True)
class CaptureResult:
    manifest: dict[str, Any]
    seconds: float
    tokens_run: int
    shards_written: int
    shards_skipped: int


def _prepare_output(config: CaptureConfig) -> None:
    """Refuse to clobber: a foreign folder, a different capture, or a finished one without --overwrite."""
    out = location(config.out)
    if not out.exists():
        return
    if not out.is_dir():
        raise StoreError(f"output {out} is a file; give a new or empty folder")
    existing = read_manifest(out)
    if existing is None:
        if any(out.iterdir()):
            raise StoreError(
                f"output folder {out} holds other files, not an activation store; choose a new folder"
            )
        return
    # an option added after the store was written counts as its default
    recorded = {**json_roundtrip(CaptureConfig().identity()), **existing.get("config", {})}
    wanted = json_roundtrip(config.identity())
    if config.overwrite:
        remove(out / "shards")
        remove(out / "manifest.json")
    elif recorded != wanted:
        diff = sorted(k for k in wanted if recorded.get(k) != wanted[k])
        raise StoreError(
            f"{out} holds a capture with a different {', '.join(diff)}; use --overwrite to replace it"
        )
    elif existing.get("complete"):
        if not config.resume:
            raise StoreError(f"{out} already holds this complete capture; use --overwrite to redo it")
    elif not config.resume and (config.world_size == 1 or distributed.active()):
        # writers started one by one (--rank without a launcher) join a shared store as it fills
        raise StoreError(
            f"{out} holds an interrupted capture; add --resume to continue it or --overwrite to restart"
        )


def json_roundtrip(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparing with a manifest."""
    import json

    return json.loads(json.dumps(value))


def _manifest(config: CaptureConfig, lm: LanguageModel, widths: dict[str, int]) -> dict[str, Any]:
    from featurelens import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "featurelens_version": __version__,
        "config": json_roundtrip(config.identity()),
        "model": {
            "spec": config.model,
            "name": lm.name,
            "class": type(lm.model).__name__,
            "n_layers": lm.n_layers,
            "d_model": lm.d_model,
        },
        "tokenizer": str(getattr(lm.tokenizer, "name_or_path", "")),
        "hooks": {hook: {"width": width} for hook, width in widths.items()},
        "dtype": config.dtype,
        "seq_len": config.seq_len,
        "corpus": dataclasses.asdict(config.corpus),
        "python": platform.python_version(),
    }


def special_token_ids(tokenizer: Any) -> np.ndarray:
    """The tokenizer's special token ids (BOS, EOS, pad, ...), sorted int64 [n]."""
    return np.asarray(sorted(getattr(tokenizer, "all_special_ids", []) or []), dtype=np.int64)


def stored_positions(tokens: np.ndarray, skip_positions: int, special_ids: np.ndarray | None) -> np.ndarray:
    """Which tokens of [batch, seq_len] a store keeps: not in the first ``skip_positions``, not special.

    Pass ``special_ids=None`` to keep special tokens.
    """
    keep = np.ones(tokens.shape, dtype=bool)
    keep[:, :skip_positions] = False
    if special_ids is not None:
        keep &= ~np.isin(tokens, special_ids)
    return keep


def capture_shard(
    lm: LanguageModel,
    sequences: list[PackedSequence],
    config: CaptureConfig,
    on_tokens: Callable[[int], None] | None = None,
) -> ShardRows:
    """Run one shard's sequences through the model in batches and keep the selected rows."""
    special_ids = None if config.keep_special else special_token_ids(lm.tokenizer)
    tokens = np.stack([s.tokens for s in sequences])
    docs = np.stack([s.docs for s in sequences])
    keep = stored_positions(tokens, config.skip_positions, special_ids)
    positions = np.broadcast_to(np.arange(config.seq_len), tokens.shape)
    parts: dict[str, list[torch.Tensor]] = {hook: [] for hook in config.hooks}
    for first in range(0, len(sequences), config.batch_size):
        batch = slice(first, first + config.batch_size)
        acts = lm.capture(torch.from_numpy(tokens[batch]), config.hooks)
        mask = torch.from_numpy(keep[batch])
        for hook in config.hooks:
            parts[hook].append(acts[hook].float().cpu()[mask])
        if on_tokens:
            on_tokens(int(mask.numel()))
    joined = {hook: torch.cat(chunks) for hook, chunks in parts.items()}
    return ShardRows(
        tokens=tokens[keep],
        docs=docs[keep],
        positions=positions[keep],
        activations={hook: to_storage(rows, config.dtype) for hook, rows in joined.items()},
        norms={hook: rows.norm(dim=-1).numpy() for hook, rows in joined.items()},
    )


def _shards(config: CaptureConfig, tokenizer: Any) -> Iterator[list[PackedSequence]]:
    sequences = islice(
        pack_sequences(documents(config.corpus), tokenizer, config.seq_len), config.n_sequences
    )
    while shard := list(islice(sequences, config.sequences_per_shard)):
        yield shard


def run_capture(
    config: CaptureConfig,
    lm: LanguageModel | None = None,
    on_tokens: Callable[[int], None] | None = None,
) -> CaptureResult:
    """Capture ``config.hooks`` into the store at ``config.out``; resumable shard by shard.

    ``on_tokens`` is called with the number of tokens each forward pass ran (for progress bars).

    Inside a process group (torchrun, ``--workers``) the ranks agree on the options first, rank 0 checks
    the output folder, each rank writes shards ``i % world_size``, and rank 0 marks the store complete once
    every rank is done; the result then counts every rank's shards and tokens. Without a group, several
    ``--rank`` writers may fill one store in turn, and whichever writes the last shard completes it.
    """
    group = distributed.active()
    if group:
        _check_world(config)
        distributed.on_main(partial(_prepare_output, config), StoreError)
    else:
        _prepare_output(config)
    lm = lm or load_model(config.model, device=config.device, dtype=config.model_dtype)
    running = str(next(lm.model.parameters()).dtype).removeprefix("torch.")
    if running != config.model_dtype:
        raise StoreError(
            f"the model given runs in {running}; the capture asks for model_dtype={config.model_dtype}"
        )
    for hook in config.hooks:
        lm.hook_point(hook)  # unknown names fail before anything is written
    widths = {
        hook: t.shape[-1] for hook, t in lm.capture(torch.ones(1, 2, dtype=torch.long), config.hooks).items()
    }
    shards = _shards(config, lm.tokenizer)
    first = next(shards, None)  # an empty corpus fails here, before anything is written
    if first is None:
        raise StoreError(f"the corpus holds fewer than seq_len={config.seq_len} tokens; nothing was captured")
    writer = StoreWriter(location(config.out), _manifest(config, lm, widths))
    distributed.barrier()  # no rank starts before every rank's model has loaded
    started = time.perf_counter()
    written = skipped = tokens_run = n_shards = 0
    for index, sequences in enumerate(chain([first], shards)):
        n_shards = index + 1
        if index % config.world_size != config.rank:
            continue
        if writer.has_shard(index):
            skipped += 1
            continue
        writer.write_shard(index, capture_shard(lm, sequences, config, on_tokens))
        written += 1
        tokens_run += len(sequences) * config.seq_len
    if not group:
        manifest = writer.finish(n_shards, config.outlier_multiple) or writer.manifest
        return CaptureResult(manifest, time.perf_counter() - started, tokens_run, written, skipped)
    counts = distributed.gather_objects((written, skipped, tokens_run))  # every rank is done: a barrier
    written, skipped, tokens_run = (sum(column) for column in zip(*counts, strict=True))
    finished = distributed.on_main(partial(writer.finish, n_shards, config.outlier_multiple), StoreError)
    seconds = time.perf_counter() - started
    return CaptureResult(finished or writer.manifest, seconds, tokens_run, written, skipped)


def _check_world(config: CaptureConfig) -> None:
    """The config's rank and world size are the process group's, and every rank captures the same thing."""
    world = distributed.current_world()
    if (config.rank, config.world_size) != (world.rank, world.size):
        raise StoreError(
            f"--rank {config.rank} --world-size {config.world_size} contradict this process's place in its "
            f"launch (rank {world.rank} of {world.size}); leave them out under torchrun"
        )
    distributed.check_same(json_roundtrip(config.identity()) | {"out": config.out}, "capture options")
