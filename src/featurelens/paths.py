"""Where featurelens files live: local paths, or any fsspec URL (``s3://``, ``gs://``, ``memory://``, ...).

The rule every store, dictionary and atlas follows:

- A plain path or a ``file://`` URL is local and stays a plain :class:`~pathlib.Path`: memory-mapped shards,
  SQLite opened in place, files renamed into place. fsspec is not even imported.
- Any other URL is *remote* (:class:`RemotePath`). Its files are read through a local cache
  (``$FEATURELENS_CACHE/remote``, else the user cache folder): each file is downloaded once per version
  (keyed by its URL and fsspec's ``ukey``) and then used like a local one, so a store streams shard by shard
  and memory-maps the cached copies, and an atlas opens the cached SQLite file.
- Results for a remote URL are written locally first and uploaded file by file, each under a temporary name
  moved into place, the file that marks the result finished (manifest, config, training record) last: a
  reader never takes half an upload for a finished result.

A protocol whose fsspec backend is missing is one :class:`RemotePathError` line naming the package to install.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurelens.errors import FeatureLensError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

LOCAL_PROTOCOLS = ("file", "local")
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


class RemotePathError(FeatureLensError):
    """A URL that cannot be used: unknown protocol, fsspec backend not installed, or unreachable."""


def cache_dir() -> Path:
    """``$FEATURELENS_CACHE`` or the user cache directory: converted weights, copies of remote files."""
    from platformdirs import user_cache_dir

    return Path(os.environ.get("FEATURELENS_CACHE") or user_cache_dir("featurelens"))


def protocol(path: str | Path) -> str | None:
    """The URL protocol of ``path`` (``"s3"``, ``"file"``), or None for a plain path."""
    match = _URL.match(path) if isinstance(path, str) else None
    return match.group(1).lower() if match else None


def is_remote(path: str | Path | RemotePath) -> bool:
    """True for a URL whose protocol is not local (``file://`` and plain paths are local)."""
    if isinstance(path, RemotePath):
        return True
    scheme = protocol(path)
    return scheme is not None and scheme not in LOCAL_PROTOCOLS


def local_path(path: str | Path) -> Path:
    """A local path or ``file://`` URL as a plain `Path` (call only when not :func:`is_remote`)."""
    scheme = protocol(path)
    return Path(str(path)[len(scheme) + 3 :]) if scheme in LOCAL_PROTOCOLS else Path(path)


def location(path: str | Path | RemotePath) -> Path | RemotePath:
    """``path`` as a local `Path` or, for a remote URL, a :class:`RemotePath` (checks the backend exists)."""
    if isinstance(path, RemotePath):
        return path
    return RemotePath.from_url(str(path)) if is_remote(path) else local_path(path)


@dataclass(frozen=True)
class RemotePath:
    """A file or folder on an fsspec filesystem, with the few `Path` methods featurelens needs."""

    fs: AbstractFileSystem
    path: str
    scheme: str

    @classmethod
    def from_url(cls, url: str) -> RemotePath:
        scheme = protocol(url) or ""
        try:
            from fsspec.core import url_to_fs

            fs, path = url_to_fs(url)
        except ImportError as error:
            raise RemotePathError(f"{scheme}:// needs {_missing_package(scheme, error)}") from None
        except ValueError as error:
            raise RemotePathError(f"{url}: {error}; featurelens reads local paths and fsspec URLs") from None
        return cls(fs, path.rstrip("/"), scheme)

    def __str__(self) -> str:
        return str(self.fs.unstrip_protocol(self.path))

    def __truediv__(self, name: str) -> RemotePath:
        return RemotePath(self.fs, f"{self.path}/{name}", self.scheme)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> RemotePath:
        return RemotePath(self.fs, self.path.rsplit("/", 1)[0], self.scheme)

    def exists(self) -> bool:
        return bool(self.fs.exists(self.path))

    def is_file(self) -> bool:
        return bool(self.fs.isfile(self.path))

    def is_dir(self) -> bool:
        return bool(self.fs.isdir(self.path))

    def iterdir(self) -> Iterator[RemotePath]:
        for entry in self.fs.ls(self.path, detail=False):
            yield RemotePath(self.fs, str(entry).rstrip("/"), self.scheme)

    def open(self, mode: str = "rb") -> Any:
        """A file object for this remote file (fsspec's, streaming)."""
        return self.fs.open(self.path, mode)

    def read_bytes(self) -> bytes:
        return bytes(self.fs.cat_file(self.path))

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def size(self) -> int:
        """Bytes in this file, or in all files under this folder."""
        return int(self.fs.du(self.path))

    def remove(self) -> None:
        """Delete this file or folder (and everything under it) if it exists."""
        if self.exists():
            self.fs.rm(self.path, recursive=True)


def _missing_package(scheme: str, error: ImportError) -> str:
    from fsspec.registry import known_implementations

    module = getattr(error.__cause__, "name", None) or getattr(error, "name", None)
    if module:
        return f"the {module} package: pip install {module}"
    known: dict[str, Any] = known_implementations.get(scheme, {})
    return f"a package fsspec names: {known.get('err', error)}"


def describe(path: Path | RemotePath) -> str:
    """``path`` as recorded in provenance: an absolute local path, or the URL."""
    return str(path.resolve() if isinstance(path, Path) else path)


def total_size(path: Path | RemotePath) -> int:
    """Bytes in file ``path``, or in all files under folder ``path``."""
    if isinstance(path, RemotePath):
        return path.size()
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files)


# -- reading through the cache ------------------------------------------------------------------------------


def cached_file(remote: RemotePath) -> Path:
    """A local copy of the remote file, downloaded once per version of it (keyed by URL and fsspec ukey)."""
    try:
        version = remote.fs.ukey(remote.path)
    except FileNotFoundError:
        raise RemotePathError(f"{remote} does not exist") from None
    key = hashlib.sha256(f"{remote}\n{version}".encode()).hexdigest()[:32]
    local = cache_dir() / "remote" / key / remote.name
    if not local.is_file():
        local.parent.mkdir(parents=True, exist_ok=True)
        staging = local.with_name(f".{local.name}.tmp-{os.getpid()}")
        try:
            remote.fs.get_file(remote.path, str(staging))
            os.replace(staging, local)
        finally:
            staging.unlink(missing_ok=True)
    return local


def cached_folder(remote: RemotePath, suffixes: Collection[str], depth: int = 2) -> Path:
    """A local folder mirroring the files of ``remote`` whose names end in ``suffixes`` (subfolders down to
    ``depth`` levels); files of other kinds are never downloaded. Each file comes from :func:`cached_file`."""
    key = hashlib.sha256(str(remote).encode()).hexdigest()[:32]
    mirror = cache_dir() / "remote" / "folders" / key / remote.name
    shutil.rmtree(mirror, ignore_errors=True)
    mirror.mkdir(parents=True)
    _mirror(remote, mirror, tuple(suffixes), depth)
    return mirror


def _mirror(remote: RemotePath, local: Path, suffixes: tuple[str, ...], depth: int) -> None:
    for entry in remote.iterdir():
        if entry.is_dir():
            if depth > 1:
                (local / entry.name).mkdir()
                _mirror(entry, local / entry.name, suffixes, depth - 1)
        elif entry.name.lower().endswith(suffixes):
            try:
                os.link(cached_file(entry), local / entry.name)
            except OSError:  # a cache on a filesystem without hard links
                shutil.copyfile(cached_file(entry), local / entry.name)


def readable(path: str | Path | RemotePath, suffixes: Collection[str] = (".json", ".safetensors")) -> Path:
    """``path`` as a local path to read: itself when local, else a cached copy of the remote file, or of the
    remote folder's files ending in ``suffixes`` (other files are never downloaded)."""
    remote = location(path)
    if isinstance(remote, Path):
        return remote
    if remote.is_file():
        return cached_file(remote)
    if remote.is_dir():
        return cached_folder(remote, suffixes)
    raise RemotePathError(f"{remote} does not exist")


# -- writing through a local staging copy -------------------------------------------------------------------


def upload_file(local: Path, remote: RemotePath) -> None:
    """Copy ``local`` to ``remote`` under a temporary name, then move it into place."""
    staging = _temporary(remote)
    remote.fs.put_file(str(local), staging.path)
    remote.fs.mv(staging.path, remote.path)


def write_bytes(remote: RemotePath, data: bytes) -> None:
    """Write ``data`` to ``remote`` under a temporary name, then move it into place."""
    staging = _temporary(remote)
    remote.fs.pipe_file(staging.path, data)
    remote.fs.mv(staging.path, remote.path)


def _temporary(remote: RemotePath) -> RemotePath:
    return remote.parent / f".{remote.name}.tmp-{os.getpid()}"


def upload(local: Path, remote: RemotePath, last: Collection[str] = ()) -> None:
    """Upload file or folder ``local`` to ``remote``; files named in ``last`` go after the others."""
    if local.is_file():
        upload_file(local, remote)
        return
    files = sorted(p for p in local.rglob("*") if p.is_file())
    order = {name: i for i, name in enumerate(last)}
    for file in sorted(files, key=lambda p: order.get(p.name, -1)):
        upload_file(file, remote / file.relative_to(local).as_posix())


def uploaded_path(remote: RemotePath, staging: Path, written: Path) -> RemotePath:
    """Where ``written``, in ``staging``, lands once ``staging`` is uploaded to ``remote``."""
    inside = written.relative_to(staging).as_posix()
    return remote if inside == "." else remote / inside


@contextmanager
def staged_output(path: str | Path, last: Collection[str] = (), *, keep: bool = False) -> Iterator[Path]:
    """The local path to write ``path`` at: for a local ``path`` the path itself, nothing else done.

    For a URL, a local staging path named like it (emptied first unless ``keep``, e.g. to resume from
    checkpoints left there), uploaded with ``last`` files last once the block succeeds, then deleted.
    """
    if not is_remote(path):
        yield local_path(path)
        return
    remote = RemotePath.from_url(str(path))
    key = hashlib.sha256(str(remote).encode()).hexdigest()[:32]
    staging = cache_dir() / "staging" / key / remote.name
    if not keep:
        remove(staging)
    staging.parent.mkdir(parents=True, exist_ok=True)
    yield staging
    upload(staging, remote, last)
    remove(staging)


@contextmanager
def edited(path: str | Path) -> Iterator[Path]:
    """The local file to edit ``path`` in place: the file itself when local. For a URL, a local copy that
    is uploaded back (under a temporary name, then moved) when the block ends, even by an error, so finished
    work is kept: only for files whose every state on the way is whole (an SQLite file edited in
    transactions)."""
    if not is_remote(path):
        yield local_path(path)
        return
    remote = RemotePath.from_url(str(path))
    key = hashlib.sha256(str(remote).encode()).hexdigest()[:32]
    copy = cache_dir() / "staging" / key / remote.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(readable(remote), copy)
    try:
        yield copy
    finally:
        upload_file(copy, remote)
        copy.unlink()


def remove(path: Path | RemotePath) -> None:
    """Delete file or folder ``path``, local or remote, if it exists."""
    if isinstance(path, RemotePath):
        path.remove()
    elif path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
