"""`featurelens steer` as a user runs it: a real subprocess on the saved planted model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from featurelens.intervene import SteeringVector
from tests.intervene.planted import COPIED, save_planted
from tests.intervene.test_circuit_cli import featurelens


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = save_planted(tmp_path_factory.mktemp("planted"))
    lines = [{"positive": f"w{i} A* w3 Q", "negative": f"w{i} B* w3 Q"} for i in (1, 2, 3, 4)]
    (folder / "pairs.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return folder


def test_steer_makes_a_vector_and_flips_the_answer(planted_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "steer"
    common = ["--model", str(planted_dir), "--hook", "layers.0.resid_mid", "--out", str(out)]
    result = featurelens(
        "steer",
        *common,
        "--pairs",
        str(planted_dir / "pairs.jsonl"),
        "--strengths=-1,0,1",
        "--prompt",
        "w5 A* w2 Q",
        "--target",
        " A",
        "--against",
        " B",
        "--new-tokens",
        "1",
    )
    assert result.returncode == 0, result.stderr
    vector = SteeringVector.load(out / "vector")
    assert vector.method == "mean" and vector.pairs == 4 and int(vector.vector.abs().argmax()) == COPIED
    sweep = json.loads((out / "sweep.json").read_text())
    rows = {row["strength"]: row for row in sweep["rows"]}
    assert rows[0.0]["continuations"] == ["A"] and rows[-1.0]["continuations"] == ["B"]
    assert rows[-1.0]["shift"] < -20 and rows[0.0]["shift"] == 0.0  # log p(A) - log p(B) flips sign
    reused = featurelens(
        "steer", *common, "--vector", str(out / "vector"), "--strengths=-1", "--prompt", "w1 A* Q"
    )
    assert reused.returncode == 0, reused.stderr
    rows = {row["strength"]: row for row in json.loads((out / "sweep.json").read_text())["rows"]}
    assert set(rows) == {0.0, -1.0}  # strength 0 is always measured: the baseline of the shift
    assert rows[-1.0]["continuations"][0].startswith("B") and rows[0.0]["continuations"][0].startswith("A")


def test_bad_steering_input_is_one_clear_line(planted_dir: Path, tmp_path: Path) -> None:
    wrong = SteeringVector(torch.ones(31), "layers.0.resid_mid", "mean", str(planted_dir), 2)
    wrong.save(tmp_path / "wrong")
    common = ["--model", str(planted_dir), "--hook", "layers.0.resid_mid", "--out", str(tmp_path / "s")]
    cases = [
        (["--strengths", "a,b", "--prompt", "w1 Q"], "not a comma list of numbers"),
        (["--pairs", str(tmp_path / "none.jsonl"), "--prompt", "w1 Q"], "neither a built-in contrast"),
        (["--vector", str(tmp_path / "wrong"), "--prompt", "w1 Q"], "width 31"),
        (["--vector", str(tmp_path), "--prompt", "w1 Q"], "not a steering vector folder"),
        (
            ["--pairs", str(planted_dir / "pairs.jsonl"), "--hook", "layers.7.resid_mid", "--prompt", "w1 Q"],
            "unknown hook point",
        ),
    ]
    for extra, fragment in cases:
        result = featurelens("steer", *common, *extra)
        assert result.returncode == 2, (extra, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], (extra, result.stderr)
