"""Device choice: under torchrun each rank of a node takes its own GPU (checked without a GPU, by stubbing
torch's CUDA queries). GGUF conversion parses each file once."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from featurelens.errors import ModelLoadError
from featurelens.models.loading import _one_gguf_parse, resolve_device


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


def test_a_gguf_file_is_parsed_once_within_a_conversion_and_the_reader_restored(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    for write in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file):
        write()
    writer.close()
    with _one_gguf_parse():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first and gguf.GGUFReader(tmp_path / "." / "tiny.gguf") is first
        assert first.fields["general.architecture"].contents() == "llama"
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is gguf.get_tensor_name_map(
            gguf.MODEL_ARCH.LLAMA, 2
        )
    assert gguf.GGUFReader is gguf.gguf_reader.GGUFReader and gguf.GGUFReader(path) is not first
    assert gguf.get_tensor_name_map is gguf.tensor_mapping.get_tensor_name_map
