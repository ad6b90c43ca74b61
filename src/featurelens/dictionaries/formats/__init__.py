"""On-disk formats for dictionaries: featurelens' own folder, SAELens folders and EleutherAI sparsify folders.

Only safetensors and JSON are ever read; pickle-based files are refused. `detect_format` tells the formats
apart by the files a folder holds:

===========  ========================================================================================
featurelens  ``config.json`` + ``weights.safetensors``
saelens      ``cfg.json`` + ``sae_weights.safetensors``
sparsify     ``cfg.json`` + ``sae.safetensors``, or a checkpoint folder holding one such folder per hook
===========  ========================================================================================

A folder may also be an fsspec URL (``s3://bucket/sae``, see :mod:`featurelens.paths`): loading copies only
its JSON and safetensors files to the local cache (never a pickle file) and reads them there; saving writes
the folder locally, then uploads it with the config last, so a remote folder with a config has whole weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from featurelens.dictionaries.base import Dictionary, DictionaryError
from featurelens.dictionaries.formats import saelens, sparsify
from featurelens.dictionaries.formats import safetensors as featurelens_format
from featurelens.dictionaries.formats.saelens import load_saelens
from featurelens.dictionaries.formats.sparsify import load_sparsify, load_sparsify_checkpoint
from featurelens.paths import RemotePath, location, readable, staged_output, uploaded_path

__all__ = [
    "FORMATS",
    "DictionaryFormat",
    "detect_format",
    "load_dictionary_folder",
    "load_saelens",
    "load_sparsify",
    "load_sparsify_checkpoint",
    "save_dictionary_folder",
]

DictionaryFormat = Literal["featurelens", "saelens", "sparsify"]
FORMATS: tuple[DictionaryFormat, ...] = get_args(DictionaryFormat)
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle"})
ACCEPTED = (
    f"featurelens reads featurelens ({featurelens_format.CONFIG} + {featurelens_format.WEIGHTS}), "
    f"SAELens ({saelens.CONFIG} + {saelens.WEIGHTS}) "
    f"or sparsify ({sparsify.CONFIG} + {sparsify.WEIGHTS}) folders"
)
_FILES: dict[str, DictionaryFormat] = {
    featurelens_format.CONFIG: "featurelens",
    featurelens_format.WEIGHTS: "featurelens",
    saelens.WEIGHTS: "saelens",
    sparsify.WEIGHTS: "sparsify",
    saelens.CONFIG: "saelens",  # shared with sparsify; the folder decides
}


def detect_format(path: str | Path) -> tuple[DictionaryFormat, Path]:
    """The format of dictionary folder ``path`` (or of the folder of one of its files) and that folder.

    A sparsify checkpoint with exactly one hook-point folder resolves to that folder; one with several is a
    `DictionaryError` that names them (see `sparsify.load_sparsify_checkpoint`).
    """
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES and not path.is_dir():
        raise DictionaryError(
            f"{path} is a {path.suffix} file, which holds pickle and is never loaded; {ACCEPTED}"
        )
    if path.is_file():
        if path.name not in _FILES:
            raise DictionaryError(f"{path} is neither a dictionary folder nor one of its files; {ACCEPTED}")
        path = path.parent
    if not path.is_dir():
        raise DictionaryError(f"{path} does not exist; {ACCEPTED}")
    names = {entry.name for entry in path.iterdir()}
    if featurelens_format.WEIGHTS in names or _is_featurelens_config(path / featurelens_format.CONFIG):
        return "featurelens", path
    if saelens.WEIGHTS in names:
        return "saelens", path
    if sparsify.WEIGHTS in names:
        return "sparsify", path
    if saelens.CONFIG in names:  # weights missing: let the config say whose folder it is
        config = featurelens_format.read_json_object(path / saelens.CONFIG)
        return ("saelens" if "d_sae" in config else "sparsify"), path
    folders = sparsify.sparsify_folders(path)
    if len(folders) == 1:
        return "sparsify", folders[0]
    if folders:
        listed = ", ".join(folder.name for folder in folders)
        raise DictionaryError(
            f"{path} is a sparsify checkpoint with {len(folders)} hook points ({listed}); load one folder, "
            f"e.g. {folders[0]}, or all with featurelens.dictionaries.formats.load_sparsify_checkpoint"
        )
    pickled = sorted(name for name in names if Path(name).suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        raise DictionaryError(
            f"{path} holds only pickle-based weights ({', '.join(pickled)}), never loaded; {ACCEPTED}"
        )
    raise DictionaryError(f"{path} is not a dictionary folder; {ACCEPTED}")


def _is_featurelens_config(path: Path) -> bool:
    try:
        return featurelens_format.read_json_object(path).get("format") == featurelens_format.FORMAT
    except DictionaryError:
        return path.is_file()  # an unreadable config.json: the featurelens loader says what is wrong


def load_dictionary_folder(path: str | Path) -> Dictionary:
    """Load the dictionary in folder ``path`` (or a URL), whichever of `FORMATS` it is in."""
    target = location(path)
    if isinstance(target, Path):
        return _load_local(target)
    # a file URL names its folder's file: mirror the folder, so the config comes with the weights
    local = readable(target.parent) / target.name if target.is_file() else readable(target)
    try:
        return _load_local(local)
    except DictionaryError as error:  # name the URL, not the cached copy
        raise DictionaryError(str(error).replace(str(local), str(target))) from None


def _load_local(path: Path) -> Dictionary:
    fmt, folder = detect_format(path)
    if fmt == "saelens":
        return load_saelens(folder)
    if fmt == "sparsify":
        return load_sparsify(folder)
    return featurelens_format.load_dictionary(folder)


def save_dictionary_folder(
    dictionary: Dictionary, path: str | Path, format: str = "featurelens"
) -> Path | RemotePath:
    """Write ``dictionary`` (scales already folded) in ``format`` under ``path``; returns its folder."""
    savers = {
        "saelens": saelens.save_saelens,
        "sparsify": sparsify.save_sparsify,
        "featurelens": featurelens_format.save_dictionary,
    }
    if format not in savers:
        raise DictionaryError(f"unknown dictionary format {format!r}; choose one of {', '.join(FORMATS)}")
    with staged_output(path, last=(featurelens_format.CONFIG, saelens.CONFIG)) as local:
        written = savers[format](dictionary, local)
    target = location(path)
    return written if isinstance(target, Path) else uploaded_path(target, local, written)
