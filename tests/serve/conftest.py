"""A real `featurelens serve` process over a planted atlas (latent j fires on token j of a tiny llama), and
over a neuron atlas of the tiny llama beside a synthetic neuron report whose notable units are planted."""

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
import numpy as np
import pytest
import torch

from featurelens.atlas import AtlasJob, AtlasSettings, build_atlas
from featurelens.capture.rows import Rows, previous_tokens
from featurelens.explain import ExplainJob, explain_atlas
from featurelens.neurons import NeuronSettings, report_from_rows, save_report
from tests.atlas.conftest import planted_atlas

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
SETTINGS = AtlasSettings(top_k=6, before=4, after=2, quantile_bins=4, per_bin=3, negatives=5)

# The planted neuron report: random normal units at three hooks of the tiny llama, except these.
NEURON_HOOK = "layers.1.mlp_neurons"  # 64 neurons; the neuron atlas served beside the report maps it
OTHER_HOOK = "layers.2.mlp_neurons"  # no atlas page for its units
REPORT_WIDTHS = {NEURON_HOOK: 64, "layers.1.resid_post": 32, OTHER_HOOK: 64}
DEAD, MASSIVE, TOKEN_UNIT, POSITIONAL = 5, 9, 11, 13  # units of NEURON_HOOK
OTHER_DEAD, OTHER_MASSIVE = 7, 3  # units of OTHER_HOOK
TOKEN = 7  # the token TOKEN_UNIT fires on
MASSIVE_VALUE, OTHER_MASSIVE_VALUE = 1000.0, 300.0  # the hooks' median |x| is about 0.67


def plant_neuron_report(out: Path) -> Path:
    """A neuron report over synthetic rows with a dead, a massive, a token and a positional unit at
    NEURON_HOOK, and a dead and a massive unit at OTHER_HOOK."""
    rng = np.random.default_rng(0)
    n_seq, seq = 32, 64
    positions = np.tile(np.arange(seq), n_seq)
    tokens = rng.integers(0, 48, size=n_seq * seq)
    n = len(tokens)
    acts = {hook: rng.standard_normal((n, width)).astype(np.float32) for hook, width in REPORT_WIDTHS.items()}
    planted, other = acts[NEURON_HOOK], acts[OTHER_HOOK]
    planted[:, DEAD] = -np.abs(planted[:, DEAD])
    planted[100, MASSIVE] = MASSIVE_VALUE
    planted[:, TOKEN_UNIT] = 0.1 * planted[:, TOKEN_UNIT] - 1.0 + 6.0 * (tokens == TOKEN)
    planted[:, POSITIONAL] = 0.05 * planted[:, POSITIONAL] + (positions - seq / 2) / 16
    other[:, OTHER_DEAD] = -np.abs(other[:, OTHER_DEAD])
    other[200, OTHER_MASSIVE] = OTHER_MASSIVE_VALUE
    rows = Rows(
        {hook: torch.from_numpy(a) for hook, a in acts.items()},
        tokens,
        previous_tokens(tokens, positions),
        positions,
        np.zeros(n, dtype=np.int64),
        np.arange(n),
    )
    report = report_from_rows(iter([rows]), list(REPORT_WIDTHS), NeuronSettings())
    report.meta.update(source="synthetic", model="tiny-llama")
    return save_report(report, out)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives the pages in Debian's headless Chromium")


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
    out = planted_atlas(root, tiny_model_dir, SETTINGS)
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
def neuron_report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return plant_neuron_report(tmp_path_factory.mktemp("neuron-report") / "report")


@pytest.fixture(scope="session")
def circuit_server(atlas_path: Path, circuit_dir: Path, neuron_report_dir: Path) -> Iterator[str]:
    """Every optional view at once (so the schema fuzzing reaches every endpoint's 200 reply)."""
    process, url = start_server(
        atlas_path, "--circuit", str(circuit_dir), "--neurons", str(neuron_report_dir)
    )
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="session")
def neuron_atlas_path(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A neuron atlas of the tiny llama's NEURON_HOOK (mapped live)."""
    out = tmp_path_factory.mktemp("neuron-atlas") / "neurons.sqlite"
    build_atlas(
        AtlasJob(
            NEURON_HOOK, str(out), tokens=2_000, model=str(tiny_model_dir), seq_len=64, settings=SETTINGS
        )
    )
    return out


@pytest.fixture(scope="session")
def neuron_server(neuron_atlas_path: Path, neuron_report_dir: Path) -> Iterator[str]:
    process, url = start_server(neuron_atlas_path, "--neurons", str(neuron_report_dir))
    yield url
    process.terminate()
    process.wait(timeout=30)
