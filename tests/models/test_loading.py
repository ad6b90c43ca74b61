"""Device choice: under torchrun each rank of a node takes its own GPU (checked without a GPU, by stubbing
torch's CUDA queries)."""

from __future__ import annotations

import pytest
import torch

from featurelens.errors import ModelLoadError
from featurelens.models.loading import resolve_device


@pytest.fixture
def four_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


@pytest.mark.parametrize("device", [None, "auto", "cuda"])
def test_each_local_rank_takes_its_own_gpu(
    four_gpus: None, monkeypatch: pytest.MonkeyPatch, device: str | None
) -> None:
    for local_rank, gpu in [(0, 0), (3, 3), (5, 1)]:  # more ranks than GPUs: they share, round robin
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        assert resolve_device(device) == torch.device("cuda", gpu)


def test_a_numbered_gpu_or_the_cpu_is_kept_under_torchrun(
    four_gpus: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


def test_outside_torchrun_cuda_is_the_current_gpu(four_gpus: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device(None) == torch.device("cuda")


def test_without_cuda_auto_is_the_cpu_and_cuda_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ModelLoadError, match="unknown device 'tpu:x'"):
        resolve_device("tpu:x")
