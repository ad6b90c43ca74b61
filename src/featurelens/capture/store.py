"""The activation store: fixed-size shards of memory-mapped ``.npy`` files plus a JSON manifest.

Layout of a store folder::

    manifest.json                 what was captured and how; "complete": true only once every shard exists
    shards/000000/tokens.npy      int32 [rows]   token id of each stored row
    shards/000000/docs.npy        int32 [rows]   index of the corpus document the token came from
    shards/000000/positions.npy   int32 [rows]   position of the token in its packed sequence
    shards/000000/<hook>.npy      [rows, width]  activations (float32/float16, or bfloat16 bits as uint16)
    shards/000000/<hook>.norm.npy float32 [rows] L2 norm of each row, to find attention-sink outliers

Shard ``i`` holds packed sequences ``[i * S, (i + 1) * S)``, so a shard's content depends only on its
index: writers (resumed runs, or several ranks each taking ``i % world_size``) fill disjoint shards.
Each shard is written into a temporary folder and renamed into place, so a shard folder that exists is whole.

A store may also live at an fsspec URL (``s3://bucket/acts``, see :mod:`featurelens.paths`). Local shards are
memory-mapped in place; remote shards are downloaded to the local cache when first read, one shard file at a
time, and memory-mapped there. A remote shard is written locally and uploaded file by file, ``tokens.npy``
last: a shard is whole when its ``tokens.npy`` exists (locally too: the folder is renamed into place whole).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch

from featurelens.errors import StoreError
from featurelens.paths import (
    RemotePath,
    RemotePathError,
    cache_dir,
    cached_file,
    location,
    upload,
    write_bytes,
)

FORMAT = "featurelens.activations"
FORMAT_VERSION = 1
STORE_DTYPES = ("float32", "float16", "bfloat16")
_ROW_FIELDS = ("tokens", "docs", "positions")


def shard_name(index: int) -> str:
    return f"{index:06d}"


def write_json_atomic(path: Path | RemotePath, payload: dict[str, Any]) -> None:
    """Write ``payload`` next to ``path`` and rename it into place, so readers never see half a file."""
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    if isinstance(path, RemotePath):
        write_bytes(path, text.encode())
        return
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.write_text(text)
    os.replace(staging, path)


def open_shard_file(file: Path | RemotePath) -> np.ndarray:
    """One ``.npy`` file of a shard, memory-mapped (a remote one from its cached copy)."""
    return np.load(cached_file(file) if isinstance(file, RemotePath) else file, mmap_mode="r")


def to_storage(acts: torch.Tensor, dtype: str) -> np.ndarray:
    """A [rows, width] tensor as the numpy array stored on disk (bfloat16 kept as its uint16 bits)."""
    if dtype == "bfloat16":
        return acts.to(torch.bfloat16).view(torch.uint16).numpy()
    return acts.to(getattr(torch, dtype)).numpy()


def from_storage(array: np.ndarray, dtype: str) -> torch.Tensor:
    """Stored rows back as a torch tensor of the captured dtype."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


class ShardedArray:
    """A read-only, memory-mapped [rows, width] view over one hook's shards; indexing returns numpy.

    Integer, slice and integer-array row indexing are supported; bfloat16 rows come back as float32.
    """

    def __init__(
        self, shards: Sequence[np.ndarray], dtype: str, lengths: Sequence[int] | None = None
    ) -> None:
        self._shards = shards
        self.stored_dtype = dtype
        self._offsets = np.cumsum([0, *(lengths if lengths is not None else (len(s) for s in shards))])
        width = shards[0].shape[1:] if shards else (0,)
        self.shape = (int(self._offsets[-1]), *width)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32) if self.stored_dtype == "bfloat16" else self._shards[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def _decode(self, rows: np.ndarray) -> np.ndarray:
        if self.stored_dtype == "bfloat16":
            return from_storage(rows, "bfloat16").float().numpy()
        return np.asarray(rows)

    def __getitem__(self, index: int | slice | np.ndarray | list[int]) -> np.ndarray:
        if isinstance(index, int | np.integer):
            return self[np.array([int(index)])][0]
        if isinstance(index, slice):
            index = np.arange(*index.indices(len(self)))
        rows = np.asarray(index, dtype=np.int64)
        rows = np.where(rows < 0, rows + len(self), rows)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        out = np.empty((len(rows), *self.shape[1:]), dtype=self._shards[0].dtype)
        owner = np.searchsorted(self._offsets, rows, side="right") - 1
        for shard in np.unique(owner):
            picked = owner == shard
            out[picked] = self._shards[shard][rows[picked] - self._offsets[shard]]
        return self._decode(out)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self._decode(np.concatenate(self._shards)) if self._shards else np.empty(self.shape)
        return whole.astype(dtype) if dtype is not None else whole


@dataclass(frozen=True)
class ShardRows:
    """The rows of one shard, ready to write: per-row metadata and [rows, width] activations per hook."""

    tokens: np.ndarray
    docs: np.ndarray
    positions: np.ndarray
    activations: dict[str, np.ndarray]
    norms: dict[str, np.ndarray]


class _CachedShards(Sequence[np.ndarray]):
    """The shard files of a remote store, each downloaded and memory-mapped when first indexed."""

    def __init__(
        self, files: Sequence[Path | RemotePath], open_file: Callable[[Path | RemotePath], np.ndarray]
    ) -> None:
        self._files = files
        self._open_file = open_file
        self._opened: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._files)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = range(len(self))[index]
        if index not in self._opened:
            self._opened[index] = self._open_file(self._files[index])
        return self._opened[index]


class ActivationStore:
    """A finished capture on disk or at a URL. Open with :meth:`open`; shards are memory-mapped, not loaded
    (those of a remote store are first downloaded to the local cache, each when first read)."""

    def __init__(self, path: Path | RemotePath, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self._shard_dirs = [path / "shards" / shard_name(s["index"]) for s in manifest["shards"]]

    @classmethod
    def open(cls, path: str | Path | RemotePath) -> ActivationStore:
        """Open a complete store (a folder or an fsspec URL); an incomplete or foreign one raises
        :class:`StoreError`."""
        path = location(path)
        manifest = read_manifest(path)
        if manifest is None:
            raise StoreError(f"{path} is not an activation store (no {FORMAT} manifest.json)")
        if not manifest.get("complete"):
            raise StoreError(
                f"{path} holds an interrupted capture; finish it with `featurelens capture ... --resume`"
            )
        return cls(path, manifest)

    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_rows"])

    @property
    def shard_rows(self) -> list[int]:
        """Number of rows of each shard, from the manifest."""
        return [int(s["n_rows"]) for s in self.manifest["shards"]]

    def _open_file(self, file: Path | RemotePath) -> np.ndarray:
        try:
            return open_shard_file(file)
        except (OSError, ValueError, RemotePathError) as error:
            raise StoreError(f"store {self.path} is damaged: cannot read {file.name} ({error})") from error

    def _load(self, filename: str) -> Sequence[np.ndarray]:
        """Every shard's ``filename``; a remote store's shards are fetched only when indexed."""
        if isinstance(self.path, RemotePath):
            return _CachedShards([d / filename for d in self._shard_dirs], self._open_file)
        return [self._open_file(d / filename) for d in self._shard_dirs]

    def _check_hook(self, hook: str) -> None:
        if hook not in self.manifest["hooks"]:
            raise StoreError(f"store {self.path} has no hook {hook!r}; it holds: {', '.join(self.hooks)}")

    def _rows(self, field: str) -> np.ndarray:
        parts = self._load(f"{field}.npy")
        return np.concatenate(parts) if parts else np.empty(0, np.int32)

    @property
    def tokens(self) -> np.ndarray:
        """Token id of every stored row, int32 [n_tokens]."""
        return self._rows("tokens")

    @property
    def docs(self) -> np.ndarray:
        """Source document index of every row, int32 [n_tokens]."""
        return self._rows("docs")

    @property
    def positions(self) -> np.ndarray:
        """Position of every row within its packed sequence, int32 [n_tokens]."""
        return self._rows("positions")

    def activations(self, hook: str) -> ShardedArray:
        """Memory-mapped activations of ``hook``, [n_tokens, width]."""
        self._check_hook(hook)
        return ShardedArray(self._load(f"{hook}.npy"), self.manifest["dtype"], self.shard_rows)

    def norms(self, hook: str) -> np.ndarray:
        """L2 norm of every row of ``hook``, float32 [n_tokens]."""
        self._check_hook(hook)
        parts = self._load(f"{hook}.norm.npy")
        return np.concatenate(parts) if parts else np.empty(0, np.float32)

    def outlier_rows(self, hook: str, multiple: float | None = None) -> np.ndarray:
        """Indices of rows whose norm exceeds ``multiple`` x the median norm (attention sinks)."""
        norms = self.norms(hook)
        multiple = multiple if multiple is not None else self.manifest["outliers"]["multiple"]
        return np.flatnonzero(norms > multiple * float(np.median(norms))) if norms.size else norms.astype(int)

    def iter_batches(
        self, hook: str, batch_size: int, *, shuffle: bool = True, seed: int = 0, buffer_shards: int = 4
    ) -> Iterator[torch.Tensor]:
        """Float32 batches [batch_size, width] (only the last smaller), memory bounded by ``buffer_shards``.

        With ``shuffle`` the shard order is permuted and rows are permuted within each buffer of
        ``buffer_shards`` shards: a shuffle buffer, so the store is never loaded into RAM.
        """
        for (batch,) in self.iter_aligned_batches(
            [hook], batch_size, shuffle=shuffle, seed=seed, buffer_shards=buffer_shards
        ):
            yield batch

    def iter_aligned_batches(
        self,
        hooks: Sequence[str],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        buffer_shards: int = 4,
        rows: tuple[int, int] | None = None,
        keep: np.ndarray | None = None,
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """Like :meth:`iter_batches`, one float32 batch per hook, every batch taking the same rows.

        ``rows`` = (start, stop) restricts the batches to that row range (e.g. leave the tail held out);
        ``keep``, a bool mask over all rows [n_tokens], leaves out the rows where it is False.
        """
        if batch_size < 1:
            raise StoreError(f"batch size must be a positive integer, got {batch_size}")
        for hook in hooks:
            self._check_hook(hook)
        start, stop = rows if rows is not None else (0, self.n_tokens)
        if not 0 <= start <= stop <= self.n_tokens:
            raise StoreError(f"row range {start}:{stop} is outside the store's {self.n_tokens} rows")
        rng = np.random.default_rng(seed)
        shards = [self._load(f"{hook}.npy") for hook in hooks]
        lengths = self.shard_rows
        pieces = _pieces(lengths, start, stop)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        order = rng.permutation(len(pieces)) if shuffle else np.arange(len(pieces))
        dtype = self.manifest["dtype"]

        def buffers() -> Iterator[list[np.ndarray]]:
            for first_piece in range(0, len(order), buffer_shards):
                chosen = [pieces[i] for i in order[first_piece : first_piece + buffer_shards]]
                columns = [
                    np.concatenate([hook_shards[i][a:b] for i, a, b in chosen]) for hook_shards in shards
                ]
                if keep is not None:
                    kept = np.concatenate([keep[offsets[i] + a : offsets[i] + b] for i, a, b in chosen])
                    columns = [column[kept] for column in columns]
                yield columns

        for batch in rebatch(buffers(), batch_size, rng if shuffle else None):
            yield tuple(from_storage(column, dtype).float() for column in batch)


def rebatch(
    buffers: Iterable[list[np.ndarray]], batch_size: int, rng: np.random.Generator | None
) -> Iterator[list[np.ndarray]]:
    """Batches of ``batch_size`` rows (only the last smaller) from buffers of aligned columns [rows, ...].

    With ``rng`` each buffer's rows are shuffled (the same permutation for every column); rows short of
    a full batch carry over into the next buffer.
    """
    carry: list[np.ndarray] = []
    for columns in buffers:
        if rng is not None:
            permutation = rng.permutation(len(columns[0]))
            columns = [column[permutation] for column in columns]
        if carry:
            columns = [np.concatenate([rest, column]) for rest, column in zip(carry, columns, strict=True)]
        full = len(columns[0]) - len(columns[0]) % batch_size
        for first in range(0, full, batch_size):
            yield [column[first : first + batch_size] for column in columns]
        carry = [column[full:] for column in columns]
    if carry and len(carry[0]):
        yield carry


def _pieces(lengths: list[int], start: int, stop: int) -> list[tuple[int, int, int]]:
    """(shard, first, end) row slices of shards with ``lengths`` covering global rows [start, stop)."""
    pieces, offset = [], 0
    for index, length in enumerate(lengths):
        first, end = max(start - offset, 0), min(stop - offset, length)
        if first < end:
            pieces.append((index, first, end))
        offset += length
    return pieces


def read_manifest(path: Path | RemotePath) -> dict[str, Any] | None:
    """The store manifest in ``path``, or None when there is none (a damaged one raises)."""
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise StoreError(f"{manifest_path} is not readable JSON ({error}); the store is damaged") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    return manifest


class StoreWriter:
    """Writes shards of one capture into ``path`` (a folder or a :class:`RemotePath`); the manifest says
    ``complete`` only at :meth:`finish`."""

    def __init__(self, path: Path | RemotePath, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = {**manifest, "complete": False}
        if isinstance(path, Path):
            (path / "shards").mkdir(parents=True, exist_ok=True)
        write_json_atomic(path / "manifest.json", self.manifest)

    def has_shard(self, index: int) -> bool:
        return (self.path / "shards" / shard_name(index) / "tokens.npy").is_file()

    def write_shard(self, index: int, rows: ShardRows) -> None:
        """Write one shard to a temporary folder, then rename it into place (or upload it, tokens last)."""
        final = self.path / "shards" / shard_name(index)
        if isinstance(final, Path):
            staging = final.with_name(f".tmp-{shard_name(index)}-{os.getpid()}")
        else:
            staging = cache_dir() / "staging" / f"shard-{shard_name(index)}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir(parents=True)
            for field in _ROW_FIELDS:
                np.save(staging / f"{field}.npy", getattr(rows, field).astype(np.int32))
            for hook, acts in rows.activations.items():
                np.save(staging / f"{hook}.npy", acts)
                np.save(staging / f"{hook}.norm.npy", rows.norms[hook].astype(np.float32))
            if isinstance(final, Path):
                os.replace(staging, final)
            else:
                upload(staging, final, last=("tokens.npy",))
                shutil.rmtree(staging)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            if error.errno == errno.ENOSPC:
                message = (
                    f"disk full while writing shard {index} to {self.path}; free space, then use --resume"
                )
                raise StoreError(message) from error
            raise StoreError(
                f"cannot write shard {index} to {self.path}: {error.strerror or error}"
            ) from error

    def finish(self, n_shards: int, outlier_multiple: float) -> dict[str, Any] | None:
        """Mark the store complete if all ``n_shards`` exist (other ranks may still be writing: then None)."""
        if not all(self.has_shard(i) for i in range(n_shards)):
            return None
        shard_dirs = [self.path / "shards" / shard_name(i) for i in range(n_shards)]
        shards = [
            {"index": i, "n_rows": len(open_shard_file(d / "tokens.npy"))} for i, d in enumerate(shard_dirs)
        ]
        draft = {**self.manifest, "shards": shards, "n_rows": sum(s["n_rows"] for s in shards)}
        store = ActivationStore(self.path, draft)
        outliers: dict[str, Any] = {"multiple": outlier_multiple, "rows": {}, "median_norm": {}}
        for hook in self.manifest["hooks"]:
            norms = store.norms(hook)
            median = float(np.median(norms)) if norms.size else 0.0
            outliers["median_norm"][hook] = median
            outliers["rows"][hook] = int((norms > outlier_multiple * median).sum())
        self.manifest = {**draft, "complete": True, "outliers": outliers}
        write_json_atomic(self.path / "manifest.json", self.manifest)
        return self.manifest
