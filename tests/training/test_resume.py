"""Checkpoints continue exactly, configurations train together as if alone, bad resumes are refused."""

from pathlib import Path

import pytest
import torch

from featurelens.dictionaries import DictionaryError
from featurelens.training import Checkpointing, TrainConfig, train_dictionaries, train_dictionary
from tests.dictionaries.planted import planted_batches, planted_directions

STEPS = 30


@pytest.fixture(scope="module")
def batches() -> list[torch.Tensor]:
    return planted_batches(planted_directions(128, 16), STEPS, 256, active=3)


def config(arch: str = "topk", **overrides: object) -> TrainConfig:
    fields: dict[str, object] = {
        "arch": arch,
        "k": 3,
        "expansion": 8,
        "batch_size": 256,
        "steps": STEPS,
        "lr": 1e-2,
        "warmup_steps": 5,
        "dead_after_tokens": 1_000,  # so AuxK and its counters are part of the state being resumed
    }
    return TrainConfig(**{**fields, **overrides})  # type: ignore[arg-type]


CONFIGS = {
    "topk": config(),
    "batchtopk": config("batchtopk"),
    "relu-target-l0": config("relu", target_l0=3.0, sparsity_coefficient=0.1),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_resume_after_a_kill_equals_an_uninterrupted_run(
    tmp_path: Path, batches: list[torch.Tensor], name: str
) -> None:
    cfg = CONFIGS[name]
    whole = train_dictionary(cfg, batches).dictionary
    saving = Checkpointing(tmp_path / "checkpoint", every=10, source={"data": "planted"})
    killed = train_dictionary(cfg, batches[:23], checkpointing=saving)  # "killed" after step 23
    assert killed.steps == 23
    resumed = train_dictionary(
        cfg, batches, checkpointing=Checkpointing(**{**saving.__dict__, "resume": True})
    )
    assert resumed.steps == STEPS and resumed.tokens == STEPS * 256
    for name_, tensor in whole.state_dict().items():
        torch.testing.assert_close(resumed.dictionary.state_dict()[name_], tensor, rtol=1e-5, atol=1e-6)
    assert resumed.dictionary.sparsity_coefficient == whole.sparsity_coefficient


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path: Path, batches: list[torch.Tensor]) -> None:
    fresh = train_dictionary(config(), batches).dictionary
    resumed = train_dictionary(config(), batches, checkpointing=Checkpointing(tmp_path / "none", resume=True))
    assert torch.equal(fresh.W_dec, resumed.dictionary.W_dec)


def test_a_checkpoint_of_other_settings_or_data_is_refused(
    tmp_path: Path, batches: list[torch.Tensor]
) -> None:
    saving = Checkpointing(tmp_path / "checkpoint", every=10, source={"data": "planted"}, resume=True)
    train_dictionary(config(), batches[:12], checkpointing=saving)
    with pytest.raises(DictionaryError, match="other settings"):
        train_dictionary(config(k=4), batches, checkpointing=saving)
    with pytest.raises(DictionaryError, match="other activations"):
        other = Checkpointing(saving.folder, source={"data": "elsewhere"}, resume=True)
        train_dictionary(config(), batches, checkpointing=other)


def test_configurations_trained_together_equal_each_trained_alone(batches: list[torch.Tensor]) -> None:
    configs = [config(k=2), config(k=4, expansion=4), config("batchtopk", lr=3e-3)]
    together = train_dictionaries(configs, batches)
    for cfg, result in zip(configs, together, strict=True):
        alone = train_dictionary(cfg, batches)
        assert result.config == cfg and result.steps == STEPS
        torch.testing.assert_close(result.dictionary.W_dec, alone.dictionary.W_dec)
        assert result.fvu == pytest.approx(alone.fvu)


def test_configurations_with_different_batch_sizes_cannot_share_a_pass(batches: list[torch.Tensor]) -> None:
    with pytest.raises(DictionaryError, match="share batch_size"):
        train_dictionaries([config(), config(batch_size=128)], batches)
