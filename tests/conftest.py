"""Tiny random models of several architecture families, built from configs in milliseconds."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import featurelens as fl

_SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4}

# family name -> (model_type, config overrides). Every family here is checked by tests/models/.
TINY_FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("llama", {**_SMALL, "num_key_value_heads": 2}),
    "mistral": ("mistral", {**_SMALL, "num_key_value_heads": 2}),
    "qwen2": ("qwen2", {**_SMALL, "num_key_value_heads": 2}),
    "gemma": ("gemma", {**_SMALL, "num_key_value_heads": 2, "head_dim": 8}),
    "gpt2": (
        "gpt2",
        {"n_embd": 32, "n_layer": 3, "n_head": 4, "n_positions": 128, "bos_token_id": 1, "eos_token_id": 2},
    ),
    "gpt_neox": ("gpt_neox", _SMALL),
    "gpt_neox_sequential": ("gpt_neox", {**_SMALL, "use_parallel_residual": False}),
    "phi": ("phi", {**_SMALL, "num_key_value_heads": 4}),
    "bert": ("bert", _SMALL),
}
PARALLEL_FAMILIES = {"gpt_neox", "phi"}
POST_NORM_FAMILIES = {"bert"}


def build_tiny_model(family: str, vocab_size: int = 96, seed: int = 0) -> torch.nn.Module:
    """A random model of ``family`` with 3 layers, width 32 and ``vocab_size`` tokens."""
    model_type, overrides = TINY_FAMILIES[family]
    config = AutoConfig.for_model(model_type, vocab_size=vocab_size, **overrides)
    torch.manual_seed(seed)
    auto = AutoModel if family in POST_NORM_FAMILIES else AutoModelForCausalLM
    return auto.from_config(config).eval()


@pytest.fixture(params=sorted(TINY_FAMILIES))
def tiny_family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def tiny_lm(tiny_family: str) -> fl.LanguageModel:
    return fl.LanguageModel(build_tiny_model(tiny_family), None, spec=f"tiny-{tiny_family}")


def build_tiny_tokenizer(vocab_size: int = 96) -> Any:
    """A real fast BPE tokenizer trained in milliseconds on bundled text, with BOS/EOS/UNK."""
    from itertools import islice

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from featurelens.corpus.bundled import pydoc_topics

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"])
    backend.train_from_iterator(islice(pydoc_topics(), 5), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A saved tiny llama + tokenizer folder: what a user's local model directory looks like."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model("llama").save_pretrained(path)
    build_tiny_tokenizer().save_pretrained(path)
    return path
