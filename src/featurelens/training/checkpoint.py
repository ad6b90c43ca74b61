"""Training checkpoints: one folder of safetensors + JSON, replaced atomically, never pickle.

``<out>/checkpoint/state.json`` holds the configs, the data source's identity and each run's JSON state;
``run<i>.safetensors`` its weights, Adam moments and dead-latent counters. A new checkpoint is written
beside the old one and swapped in by renames, so a kill at any moment leaves one whole checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from featurelens.capture.run import json_roundtrip
from featurelens.dictionaries.base import DictionaryError
from featurelens.training.config import TrainConfig
from featurelens.training.state import TrainingRun

FORMAT = "featurelens.checkpoint"
STATE = "state.json"


def checkpoint_dir(out: Path) -> Path:
    """Where the checkpoint of a training run writing to ``out`` lives."""
    return out / "checkpoint"


def save_checkpoint(folder: Path, runs: list[TrainingRun], source: dict[str, Any]) -> None:
    """Write the state of every run in ``runs`` (trained on ``source``) to ``folder``, atomically."""
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f"{folder.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for index, run in enumerate(runs):
        save_file(run.state_tensors(), str(tmp / f"run{index}.safetensors"))
    state = {
        "format": FORMAT,
        "configs": [run.config.to_dict() for run in runs],
        "source": source,
        "runs": [run.state_json() for run in runs],
    }
    (tmp / STATE).write_text(json.dumps(state, indent=2) + "\n")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(folder: Path) -> Path | None:
    """``folder`` if it holds a checkpoint, its predecessor if a kill struck mid-swap, else None."""
    for candidate in (folder, folder.with_name(f"{folder.name}.old")):
        if (candidate / STATE).is_file():
            return candidate
    return None


def load_checkpoint(
    folder: Path, configs: list[TrainConfig], source: dict[str, Any], device: str | torch.device = "cpu"
) -> list[TrainingRun]:
    """The runs saved in ``folder``; refuses a checkpoint of other configs or another data source."""
    try:
        state = json.loads((folder / STATE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DictionaryError(
            f"checkpoint {folder} is unreadable ({error}); start over with --overwrite"
        ) from None
    if state.get("format") != FORMAT:
        raise DictionaryError(f"{folder} is not a featurelens checkpoint")
    wanted = [config.to_dict() for config in configs]
    if json_roundtrip(wanted) != state["configs"]:
        raise DictionaryError(
            f"checkpoint {folder} was written by a run with other settings; "
            "repeat that run's options to resume it, or pass --overwrite to start over"
        )
    if json_roundtrip(source) != state["source"]:
        raise DictionaryError(
            f"checkpoint {folder} was trained on other activations ({state['source']}); pass --overwrite"
        )
    runs = []
    for index, (config, run_state) in enumerate(zip(configs, state["runs"], strict=True)):
        try:
            tensors = load_file(str(folder / f"run{index}.safetensors"))
        except (OSError, SafetensorError) as error:
            raise DictionaryError(f"checkpoint {folder} is damaged ({error}); pass --overwrite") from None
        runs.append(TrainingRun.restore(config, tensors, run_state, device))
    return runs
