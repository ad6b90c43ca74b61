"""`featurelens circuit` as a user runs it: a real subprocess on a saved model with a planted circuit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.intervene.planted import HEAD, NEURON, save_planted

CLI = [sys.executable, "-m", "featurelens.cli.main"]


def featurelens(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_planted(tmp_path_factory.mktemp("planted"))


def test_circuit_finds_the_planted_head_and_neuron(planted_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "circuit"
    args = ["--model", str(planted_dir), "--task", str(planted_dir / "prompts.jsonl"), "--out", str(out)]
    result = featurelens("circuit", *args, "--top-heads", "1", "--top-neurons", "1", "--exact-neurons", "4")
    assert result.returncode == 0, result.stderr
    graph = json.loads((out / "circuit.json").read_text())
    assert {node["id"] for node in graph["nodes"]} == {f"L0H{HEAD}", f"L0N{NEURON}"}
    assert graph["faithfulness"]["faithfulness"] == pytest.approx(1.0, abs=0.05)
    assert abs(graph["faithfulness"]["complement"]) < 0.05
    assert graph["clean_metric"] > 10 > -10 > graph["corrupt_metric"]
    edge = next(e for e in graph["edges"] if e["source"] == f"L0H{HEAD}" and e["target"] == f"L0N{NEURON}")
    assert edge["weight"] == pytest.approx(1.0, abs=0.1)  # the neuron's change comes from the head
    assert 0.5 < edge["attribution"] < 1.5  # and most of the metric's gap flows along that edge
    table = pq.read_table(out / "components.parquet").to_pylist()
    assert len(table) == 2 * 4 + 2 * 16  # every head and every neuron
    assert sum(row["in_circuit"] for row in table) == 2
    exact = {
        row["component"]: row["exact_effect"] for row in table if row["exact_effect"] == row["exact_effect"]
    }
    assert len(exact) == 8 + 4 and exact[f"L0H{HEAD}"] > 0.95
    assert "faithfulness" in result.stdout and "circuit:" not in result.stderr
    assert not list(out.glob(".*partial"))


def test_bad_circuit_input_is_one_clear_line(planted_dir: Path, tmp_path: Path) -> None:
    model = ["--model", str(planted_dir), "--out", str(tmp_path / "c")]
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text("{not json\n")
    uneven = tmp_path / "uneven.jsonl"
    uneven.write_text(
        json.dumps({"clean": "w1 Q", "corrupt": "w1 w2 Q", "correct": " A", "wrong": " B"}) + "\n"
    )
    long_answer = tmp_path / "long.jsonl"
    long_answer.write_text(
        json.dumps({"clean": "w1 Q", "corrupt": "w2 Q", "correct": " A B", "wrong": " B"}) + "\n"
    )
    cases = [
        (["--task", str(tmp_path / "missing.jsonl")], "neither 'ioi' nor a prompt file"),
        (["--task", str(bad_json)], "is not JSON"),
        (["--task", str(uneven)], "they must align"),
        (["--task", str(long_answer)], "a metric token must be one"),
        (
            ["--task", str(planted_dir / "prompts.jsonl"), "--components", "heads,layers"],
            "unknown components kind",
        ),
        (
            ["--task", str(planted_dir / "prompts.jsonl"), "--exact-prompts", "0"],
            "exact_prompts must be at least 1",
        ),
    ]
    for extra, fragment in cases:
        result = featurelens("circuit", *model, *extra)
        assert result.returncode == 2, (extra, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], (extra, result.stderr)
