"""The codebook paper's fine-tuning: the spliced forward pass is `featurelens evaluate`'s, the language-model
loss falls, and the straight-through gradient reaches the layers below the codebook."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import featurelens as fl
from featurelens.dictionaries import CodebookDictionary
from featurelens.evaluate.spliced import spliced_loss
from featurelens.training.codebook_finetune import finetune_with_codebook
from featurelens.training.state import normalising_scale
from tests.dictionaries.planted import single_threaded

HOOK = "layers.1.resid_post"

one_thread = pytest.fixture(autouse=True, scope="module")(single_threaded)


def scaled_codebook(lm: fl.LanguageModel, input_ids: torch.Tensor) -> CodebookDictionary:
    codebook = CodebookDictionary(32, 64, k=4, hook_in=HOOK)
    acts = lm.capture(input_ids, [HOOK])[HOOK].reshape(-1, 32)
    scale = normalising_scale(acts)
    codebook.set_scales_(scale, scale)
    return codebook


def test_finetuning_lowers_the_spliced_loss_and_trains_below_the_codebook(tiny_model_dir: Path) -> None:
    torch.manual_seed(0)
    lm = fl.load_model(str(tiny_model_dir))
    input_ids = torch.randint(0, 96, (8, 16), generator=torch.Generator().manual_seed(1))
    codebook = scaled_codebook(lm, input_ids)
    mask = torch.ones_like(input_ids, dtype=torch.bool)
    mask[:, 0] = False  # position 0 stays clean, as in the fine-tuning
    with torch.no_grad():
        before = spliced_loss(lm, HOOK, codebook, input_ids, mask)
    below = lm.model.model.layers[0].mlp.down_proj.weight.detach().clone()
    above = lm.model.model.layers[2].mlp.down_proj.weight.detach().clone()
    steps = finetune_with_codebook(lm, codebook, [input_ids] * 30, lr=3e-3)
    # The first step ran exactly the spliced model that `featurelens evaluate` measures.
    assert steps[0].lm_loss == pytest.approx(before.spliced, rel=1e-5)
    with torch.no_grad():
        after = spliced_loss(lm, HOOK, codebook, input_ids, mask)
    print(f"spliced loss {before.spliced:.3f} -> {after.spliced:.3f} (clean before {before.clean:.3f})")
    assert after.spliced < before.spliced - 0.5
    assert not torch.equal(lm.model.model.layers[0].mlp.down_proj.weight, below)  # straight-through
    assert not torch.equal(lm.model.model.layers[2].mlp.down_proj.weight, above)
    assert torch.allclose(codebook.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)
    assert (codebook.code_norms >= 0).all()
    with torch.no_grad():
        assert ((codebook.encode(torch.randn(10, 32)) != 0).sum(1) <= 4).all()


def test_codebook_only_finetuning_leaves_the_model_unchanged(tiny_model_dir: Path) -> None:
    lm = fl.load_model(str(tiny_model_dir))
    input_ids = torch.randint(0, 96, (8, 16), generator=torch.Generator().manual_seed(2))
    codebook = scaled_codebook(lm, input_ids)
    weights = {name: p.detach().clone() for name, p in lm.model.named_parameters()}
    norms = codebook.code_norms.detach().clone()
    steps = finetune_with_codebook(lm, codebook, [input_ids] * 10, lr=3e-3, train_model=False)
    assert steps[-1].lm_loss < steps[0].lm_loss
    assert all(torch.equal(p, weights[name]) for name, p in lm.model.named_parameters())
    assert not torch.equal(codebook.code_norms, norms)
