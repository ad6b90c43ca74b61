"""Every hook name means the same tensor on every family: proven against HF outputs and residual sums."""

from __future__ import annotations

import pytest
import torch

import featurelens as fl
from featurelens.errors import HookError
from featurelens.models.hook_points import HookPoint, find_down_projection

from ..conftest import PARALLEL_FAMILIES, POST_NORM_FAMILIES, build_tiny_model

IDS = torch.tensor([[5, 17, 42, 8, 63, 21, 9], [3, 3, 90, 14, 77, 2, 51]])
ATOL = 1e-5


def capture_all(lm: fl.LanguageModel) -> dict[str, torch.Tensor]:
    return lm.capture(IDS, list(lm.hook_points), stop_early=False)


def test_resid_post_equals_output_hidden_states(tiny_lm: fl.LanguageModel) -> None:
    acts = capture_all(tiny_lm)
    with torch.inference_mode():
        hidden = tiny_lm.model(input_ids=IDS, output_hidden_states=True).hidden_states
    n = tiny_lm.n_layers
    for i in range(n - 1):
        torch.testing.assert_close(acts[f"layers.{i}.resid_post"], hidden[i + 1], atol=ATOL, rtol=0)
    # HF replaces the last hidden state with the final norm's output when the model has one.
    last = acts["final_norm"] if "final_norm" in acts else acts[f"layers.{n - 1}.resid_post"]
    torch.testing.assert_close(last, hidden[n], atol=ATOL, rtol=0)
    for i in range(n):
        torch.testing.assert_close(acts[f"layers.{i}.resid_pre"], hidden[i], atol=ATOL, rtol=0)


def test_residual_stream_identities(tiny_family: str, tiny_lm: fl.LanguageModel) -> None:
    acts = capture_all(tiny_lm)
    for i in range(tiny_lm.n_layers):
        pre, attn, mlp, post = (
            acts[f"layers.{i}.{p}"] for p in ("resid_pre", "attn_out", "mlp_out", "resid_post")
        )
        if tiny_family in POST_NORM_FAMILIES:
            continue  # a LayerNorm follows each residual addition: no additive identity holds
        if tiny_family in PARALLEL_FAMILIES:
            assert f"layers.{i}.resid_mid" not in acts  # attention and MLP both read resid_pre
            torch.testing.assert_close(pre + attn + mlp, post, atol=ATOL, rtol=0)
            continue
        mid = acts[f"layers.{i}.resid_mid"]
        torch.testing.assert_close(pre + attn, mid, atol=ATOL, rtol=0)
        torch.testing.assert_close(mid + mlp, post, atol=ATOL, rtol=0)


def test_mlp_out_is_down_projection_of_neurons(tiny_lm: fl.LanguageModel) -> None:
    acts = capture_all(tiny_lm)
    for i in range(tiny_lm.n_layers):
        down = tiny_lm.hook_point(f"layers.{i}.mlp_neurons").module
        with torch.inference_mode():
            projected = down(acts[f"layers.{i}.mlp_neurons"])
        torch.testing.assert_close(projected, acts[f"layers.{i}.mlp_out"], atol=ATOL, rtol=0)


def test_every_family_offers_the_core_points(tiny_lm: fl.LanguageModel) -> None:
    for i in range(tiny_lm.n_layers):
        for point in ("resid_pre", "attn_out", "mlp_in", "mlp_neurons", "mlp_out", "resid_post"):
            assert f"layers.{i}.{point}" in tiny_lm.hook_points
    assert "embed" in tiny_lm.hook_points


def test_stop_early_skips_later_layers() -> None:
    lm = fl.LanguageModel(build_tiny_model("llama"), None)
    ran: list[int] = []
    layers = lm.model.model.layers
    handles = [layer.register_forward_hook(lambda *_a, i=i: ran.append(i)) for i, layer in enumerate(layers)]
    lm.capture(IDS, ["layers.1.resid_post"])
    assert ran == [0, 1]
    ran.clear()
    lm.capture(IDS, ["layers.1.resid_post"], stop_early=False)
    assert ran == [0, 1, 2]
    for handle in handles:
        handle.remove()


def test_unknown_hook_names_valid_ones_on_one_line() -> None:
    lm = fl.LanguageModel(build_tiny_model("llama"), None)
    with pytest.raises(HookError) as error:
        lm.capture(IDS, ["layers.9.resid_post"])
    message = str(error.value)
    assert "\n" not in message
    assert "'layers.9.resid_post'" in message and "layers.{0..2}" in message and "resid_post" in message


def test_a_hook_that_never_fires_is_an_error() -> None:
    lm = fl.LanguageModel(build_tiny_model("llama"), None)
    orphan = HookPoint("orphan", torch.nn.Linear(2, 2), "output", 0)
    lm.hook_points["orphan"] = orphan
    with pytest.raises(HookError, match=r"orphan.*did not fire"):
        lm.capture(IDS, ["orphan", "layers.0.resid_post"])


def test_down_projection_is_ambiguous_for_two_writers() -> None:
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    assert find_down_projection(mlp, 4) is None
