"""A real `featurelens serve` process over a planted atlas (latent j fires on token j of a tiny llama), and
over a neuron atlas of the tiny llama beside a synthetic neuron report whose notable units are planted and
probe results whose best units are planted."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from featurelens.atlas import AtlasJob, AtlasSettings, build_atlas
from featurelens.capture.rows import Rows, previous_tokens
from featurelens.compare.maps import MapJob, run_maps
from featurelens.compare.output import save_maps
from featurelens.explain import ExplainJob, explain_atlas
from featurelens.neurons import NeuronSettings, report_from_rows, save_report
from featurelens.probes import Labels, ProbeSettings, cross_validate
from featurelens.probes.run import save_probe
from tests.atlas.conftest import plant_scores, planted_atlas, varied_tokens
from tests.neurons.test_report import TOKEN as TOKEN_CHANNEL
from tests.neurons.test_report import planted_rows, write_store

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

# The planted probe results: `featurelens probe` on a store of NEURON_HOOK whose channel PROBED_UNIT fires
# exactly on one token, for the label "that channel > 1"; and, at OTHER_HOOK, a label that is the sign of the
# sum of OTHER_PROBED_UNITS, probed for k in OTHER_PROBE_KS.
PROBED_UNIT = TOKEN_CHANNEL
PROBE_KS = (1, 2)
OTHER_PROBED_UNITS = (3, 11, 17, 29)
OTHER_PROBE_KS = (1, 2, 4, 8)
OTHER_PROBE_FOLDS = 4


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


def probe_a_store(root: Path, tiny_model_dir: Path) -> Path:
    """`featurelens probe` of NEURON_HOOK in a store of planted rows (24 channels); label: PROBED_UNIT > 1."""
    store = write_store(root / "acts", planted_rows(), str(tiny_model_dir))
    rows = planted_rows()
    np.save(root / "labels.npy", (rows["x"][:, PROBED_UNIT] > 1).astype(np.int64))
    out = root / "probe"
    command = [
        sys.executable,
        "-m",
        "featurelens.cli.main",
        "probe",
        "--acts",
        str(store),
        "--hook",
        NEURON_HOOK,
        "--tokens",
        str(len(rows["tokens"])),
        "--labels",
        str(root / "labels.npy"),
        "--k",
        ",".join(map(str, PROBE_KS)),
        "--out",
        str(out),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    return out


def plant_probe(out: Path, hook: str = OTHER_HOOK, dictionary: str | None = None) -> Path:
    """Probe results (saved as `featurelens probe` saves them) of ``hook``, 64 units of noise, for a label
    that is the sign of the sum of OTHER_PROBED_UNITS; the fifth unit's ranking score and the shuffled
    probe's spread are then made NaN, as a run writes them for a constant unit or an empty probe."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1200, 64))
    label = Labels(
        "planted sum", x[:, list(OTHER_PROBED_UNITS)].sum(1) > 0, np.ones(1200, bool), "classification"
    )
    settings = ProbeSettings(ks=OTHER_PROBE_KS, folds=OTHER_PROBE_FOLDS)
    result = cross_validate(x, label, np.repeat(np.arange(40), 30), settings)
    meta: dict[str, object] = {"source": "synthetic", "model": "tiny-llama", "hook": hook, "units": 64}
    meta.update(rows=1200, documents=40, settings=asdict(settings), seconds=0.0)
    if dictionary is not None:
        meta["dictionary"] = dictionary
    save_probe([result], meta, out, overwrite=True)
    written = json.loads((out / "results.json").read_text())
    written["targets"][0]["units"][4][1] = float("nan")
    written["targets"][0]["std"]["shuffled"] = float("nan")
    (out / "results.json").write_text(json.dumps(written, allow_nan=True))
    return out


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


@pytest.fixture(scope="session")
def ordered_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[str]:
    """An atlas whose recommended order is planted (tests.atlas.conftest: COUNTS, SCORES), served."""
    out = planted_atlas(tmp_path_factory.mktemp("ordered"), tiny_model_dir, SETTINGS, tokens=varied_tokens())
    plant_scores(out)
    process, url = start_server(out)
    yield url
    process.terminate()
    process.wait(timeout=30)


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
def probe_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return probe_a_store(tmp_path_factory.mktemp("probe"), tiny_model_dir)


@pytest.fixture(scope="session")
def other_probe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return plant_probe(tmp_path_factory.mktemp("other-probe") / "probe")


@pytest.fixture(scope="session")
def compare_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """Layer maps of the tiny llama against its random initialisation, as `featurelens compare` saves them."""
    job = MapJob(model=str(tiny_model_dir), tokens=1_000, seq_len=64, null_rows=64, permutations=10, seed=1)
    return save_maps(run_maps(job), tmp_path_factory.mktemp("compare") / "maps")


@pytest.fixture(scope="session")
def circuit_server(
    atlas_path: Path, circuit_dir: Path, neuron_report_dir: Path, probe_dir: Path, compare_dir: Path
) -> Iterator[str]:
    """Every optional view at once (so the schema fuzzing reaches every endpoint's 200 reply)."""
    process, url = start_server(
        atlas_path,
        "--circuit",
        str(circuit_dir),
        "--neurons",
        str(neuron_report_dir),
        "--probe",
        str(probe_dir),
        "--compare",
        str(compare_dir),
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


@pytest.fixture(scope="session")
def probe_server(neuron_atlas_path: Path, probe_dir: Path, other_probe_dir: Path) -> Iterator[str]:
    """The neuron atlas of NEURON_HOOK beside both probe results (only the first's units have pages)."""
    process, url = start_server(neuron_atlas_path, "--probe", str(probe_dir), "--probe", str(other_probe_dir))
    yield url
    process.terminate()
    process.wait(timeout=30)
