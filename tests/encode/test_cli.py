"""`featurelens encode` as a user runs it: real subprocesses on small files and on a store, the output
folder, and one clear line (exit 2) for each bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tests.cli.test_cli import assert_one_line_error, featurelens
from tests.stores import write_rows_store


def write_inputs(root: Path, n: int = 240, seed: int = 0) -> dict[str, str]:
    """Features, repeated recordings (one constant target, two NaN rows) and run labels, as .npy files."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    signal = x @ rng.normal(size=(6, 5))
    y = signal[None] + rng.normal(size=(3, n, 5)) * np.array([0.5, 1, 2, 4, 1])
    y[:, :, 4] = 7.0  # constant
    x[17, 2] = np.nan
    y[1, 30, 0] = np.nan
    files = {"x": root / "x.npy", "y": root / "y.npy", "groups": root / "runs.npy"}
    np.save(files["x"], x)
    np.save(files["y"], y)
    np.save(files["groups"], np.repeat(np.arange(8), n // 8))
    return {name: str(path) for name, path in files.items()}


def test_cli_writes_the_result_folder(tmp_path: Path) -> None:
    files = write_inputs(tmp_path)
    out = tmp_path / "encode"
    args = [
        "encode",
        "--x",
        files["x"],
        "--y",
        files["y"],
        "--repeats-axis",
        "0",
        "--groups",
        files["groups"],
    ]
    args += ["--delays", "0,1", "--folds", "4", "--inner-folds", "3", "--permutations", "19", "--drop-nan"]
    done = featurelens(*args, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "held-out R²" in done.stdout and "1 target(s) have an undefined score" in done.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["format"] == "featurelens.encode" and results["n_targets"] == 5
    assert results["dropped_rows"] == 3  # row 17, the delayed copy of it in row 18, and row 30
    assert results["rows"] == 237 and results["repeats"] == 3
    assert results["settings"]["delays"] == [0, 1] and results["job"]["groups"] == files["groups"]
    by_name = {row["target"]: row for row in results["targets"]}
    assert by_name["0"]["raw_r2"] > 0.8 and by_name["0"]["pvalue"] == 0.05  # 1 / (1 + 19)
    assert by_name["4"]["raw_r2"] is None and "constant" in by_name["4"]["reason"]
    assert by_name["3"]["normalised"] == by_name["3"]["raw_r2"] / by_name["3"]["ceiling"]
    table = pq.read_table(out / "targets.parquet").to_pydict()
    assert table["target"] == ["0", "1", "2", "3", "4"] and "split_half" in table
    assert (out / "r2_vs_ceiling.png").stat().st_size > 0
    assert_one_line_error(featurelens(*args, "--out", str(out)), "already exists", "--overwrite")


def test_cli_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    files = write_inputs(tmp_path)
    out = ["--out", str(tmp_path / "never")]
    rng = np.random.default_rng(1)
    np.save(tmp_path / "short.npy", rng.normal(size=(200, 3)))
    assert_one_line_error(
        featurelens("encode", "--x", files["x"], "--y", str(tmp_path / "short.npy"), *out),
        "features have 240 rows but recordings have 200",
    )
    assert_one_line_error(
        featurelens("encode", "--x", files["x"], "--y", files["y"], "--repeats-axis", "0", *out),
        "2 of 240 rows hold NaN",
        "--drop-nan",
    )
    np.save(tmp_path / "tiny_x.npy", rng.normal(size=(6, 2)))
    np.save(tmp_path / "tiny_y.npy", rng.normal(size=(6, 2)))
    tiny = ["--x", str(tmp_path / "tiny_x.npy"), "--y", str(tmp_path / "tiny_y.npy")]
    assert_one_line_error(featurelens("encode", *tiny, *out), "6 rows cannot fill 5 folds")
    np.save(tmp_path / "x40.npy", rng.normal(size=(40, 2)))
    np.save(tmp_path / "y40.npy", rng.normal(size=(40, 2)))
    small = ["--x", str(tmp_path / "x40.npy"), "--y", str(tmp_path / "y40.npy"), "--folds", "2"]
    assert_one_line_error(
        featurelens("encode", *small, "--permutations", "200", "--permutation-block", "10", *out),
        "allow only 24 distinct permutations",
    )
    np.save(tmp_path / "once.npy", rng.normal(size=(1, 40, 2)))
    assert_one_line_error(
        featurelens(
            "encode",
            "--x",
            str(tmp_path / "x40.npy"),
            "--y",
            str(tmp_path / "once.npy"),
            "--repeats-axis",
            "0",
            *out,
        ),
        "repeats axis has length 1",
        "no noise ceiling",
    )
    assert not (tmp_path / "never").exists()


def test_cli_encodes_one_hook_of_a_store_from_another(tmp_path: Path) -> None:
    """A planted store: the target hook is a linear map of the feature hook plus noise, so every target
    is predicted well; folds are grouped by document."""
    rng = np.random.default_rng(2)
    seq_len, n_seq = 32, 40
    n = seq_len * n_seq
    x = rng.normal(size=(n, 12)).astype(np.float32)
    y = (x @ rng.normal(size=(12, 20)) + 0.5 * rng.normal(size=(n, 20))).astype(np.float32)
    store = write_rows_store(
        tmp_path / "acts",
        rng.integers(3, 60, n).astype(np.int32),
        np.repeat(np.arange(n_seq) // 2, seq_len).astype(np.int32),
        np.tile(np.arange(seq_len), n_seq).astype(np.int32),
        {"layers.0.resid_post": x, "layers.2.mlp_neurons": y},
        "tiny",
        seq_len,
    )
    out = tmp_path / "encode"
    common = ["encode", "--acts", str(store), "--hook", "layers.0.resid_post"]
    done = featurelens(
        *common, "--target-hook", "layers.2.mlp_neurons", "--max-targets", "8", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["source"] == "store" and results["target_units"] == "8 of 20"
    assert results["n_targets"] == 8 and results["rows"] == n
    assert min(row["raw_r2"] for row in results["targets"]) > 0.9
    assert_one_line_error(
        featurelens(*common, "--target-hook", "layers.5.mlp_neurons", "--out", str(tmp_path / "b")),
        "no hook 'layers.5.mlp_neurons'",
    )


def test_with_no_files_or_store_it_encodes_one_hook_of_the_model_live(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    out = tmp_path / "live"
    run = featurelens(
        "encode", "--model", str(tiny_model_dir), "--hook", "layers.0.resid_post", "--target-hook",
        "layers.1.resid_post", "--tokens", "1500", "--seq-len", "64", "--folds", "3", "--out", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["source"] == "live" and results["target_units"] == "32 of 32"
    assert results["rows"] > 1400  # every position but each sequence's first
    # One block of a small random model barely moves the residual stream: the earlier layer predicts it.
    assert results["median_raw_r2"] > 0.9
    assert_one_line_error(
        featurelens(
            "encode",
            "--model",
            str(tiny_model_dir),
            "--hook",
            "layers.9.mlp_out",
            "--out",
            str(tmp_path / "x"),
        ),
        "unknown hook point 'layers.9.mlp_out'",
    )
