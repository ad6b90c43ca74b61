"""A real `featurelens serve` process over a planted atlas (latent j fires on token j of a tiny llama)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from featurelens.atlas import AtlasSettings
from featurelens.explain import ExplainJob, explain_atlas
from tests.atlas.conftest import planted_atlas

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(atlas: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """Start `featurelens serve` (with ``extra`` options) on a free port and wait until it answers."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "featurelens.cli.main", "serve", str(atlas), "--port", str(port), *extra]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read() if process.stderr else ''}")
        try:
            if httpx.get(f"{url}/api/meta", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("server did not answer within 120 s")


@pytest.fixture(scope="session")
def atlas_path(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("served")
    settings = AtlasSettings(top_k=6, before=4, after=2, quantile_bins=4, per_bin=3, negatives=5)
    out = planted_atlas(root, tiny_model_dir, settings)
    explain_atlas(ExplainJob(str(out), features="all"))  # baseline explanations for the pages to show
    return out


@pytest.fixture
def fresh_server(atlas_path: Path) -> Iterator[str]:
    """A server of its own (its model not loaded yet)."""
    process, url = start_server(atlas_path)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="session")
def server(atlas_path: Path) -> Iterator[str]:
    process, url = start_server(atlas_path)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="session")
def circuit_dir(atlas_path: Path, tiny_model_dir: Path) -> Path:
    """`featurelens circuit` run on the served atlas's model, with its dictionary's features ranked too."""
    root = atlas_path.parent
    prompts = root / "prompts.jsonl"
    lines = [
        {"clean": f"{a} b c d e", "corrupt": f"{a} b c d f", "correct": " t", "wrong": " s"} for a in "aghk"
    ]
    prompts.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = root / "circuit"
    command = [
        sys.executable,
        "-m",
        "featurelens.cli.main",
        "circuit",
        "--model",
        str(tiny_model_dir),
        "--task",
        str(prompts),
        "--dictionary",
        str(root / "sae"),
        "--top-features",
        "3",
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def circuit_server(atlas_path: Path, circuit_dir: Path) -> Iterator[str]:
    process, url = start_server(atlas_path, "--circuit", str(circuit_dir))
    yield url
    process.terminate()
    process.wait(timeout=30)
