"""The CLI with URLs, as a user runs it: ``file://`` URLs through every stage (memory:// does not cross
processes), and a protocol whose fsspec backend is missing as one line with exit code 2."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import featurelens as fl
from tests.cli.test_cli import assert_one_line_error, featurelens

HOOK = "layers.1.resid_post"


def test_capture_train_atlas_and_show_take_file_urls(tiny_model_dir: Path, tmp_path: Path) -> None:
    url = f"file://{tmp_path}"
    capture = featurelens(
        "capture", "--model", str(tiny_model_dir), "--hook", HOOK, "--tokens", "3000", "--seq-len", "32",
        "--out", f"{url}/acts",
    )  # fmt: skip
    assert capture.returncode == 0, capture.stderr
    assert json.loads(featurelens("info", f"{url}/acts", "--json").stdout)["complete"]
    train = featurelens(
        "train", "--acts", f"{url}/acts", "--hook", HOOK, "--k", "4", "--expansion", "2",
        "--batch-size", "256", "--out", f"{url}/sae",
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == [
        "config.json", "training.json", "weights.safetensors"
    ]  # fmt: skip
    assert json.loads((tmp_path / "sae" / "training.json").read_text())["acts"] == str(tmp_path / "acts")
    atlas = featurelens("atlas", f"{url}/sae", "--acts", f"{url}/acts", "--out", f"{url}/atlas.sqlite")
    assert atlas.returncode == 0, atlas.stderr
    show = featurelens("show", f"{url}/atlas.sqlite", "0")
    assert show.returncode == 0 and "feature 0" in show.stdout, show.stderr
    with fl.Atlas.open(tmp_path / "atlas.sqlite") as opened:
        assert len(opened) == 64 and opened.meta["acts"] == str(tmp_path / "acts")
    stored = fl.ActivationStore.open(tmp_path / "acts")
    assert stored.n_tokens == np.asarray(stored.activations(HOOK)).shape[0] > 2000
    local_only = (  # local paths and file:// URLs never import fsspec: no overhead on the local path
        "import sys, featurelens as fl\n"
        f"store = fl.ActivationStore.open({url + '/acts'!r})\n"
        f"assert sum(len(b) for b in store.iter_batches({HOOK!r}, 256)) == store.n_tokens\n"
        f"fl.Dictionary.load({url + '/sae'!r}).encode(next(store.iter_batches({HOOK!r}, 9)))\n"
        f"fl.Atlas.open({url + '/atlas.sqlite'!r}).feature(0)\n"
        "print('fsspec' in sys.modules, type(store.activations(" + repr(HOOK) + ")._shards[0]).__name__)"
    )
    result = subprocess.run([sys.executable, "-c", local_only], capture_output=True, text=True, timeout=300)
    assert result.stdout.split() == ["False", "memmap"], result.stderr


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed here")
@pytest.mark.parametrize("verb", [["info"], ["show"], ["train", "--acts"], ["capture", "--out"]])
def test_a_missing_backend_is_one_line_naming_the_package(verb: list[str]) -> None:
    result = featurelens(*verb, "s3://bucket/thing")
    assert_one_line_error(result, "s3:// needs the s3fs package: pip install s3fs")
