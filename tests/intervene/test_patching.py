"""Patching finds a planted circuit: exact patching (batched = one at a time), attribution patching, and the
faithfulness of the found circuit against its complement."""

from __future__ import annotations

import pytest
import torch

import featurelens as fl
from featurelens.dictionaries import TopKDictionary
from featurelens.dictionaries.identity import IdentityDictionary
from featurelens.intervene import InterventionError
from featurelens.intervene.attribution import attribution_patching, edge_attribution
from featurelens.intervene.circuits import faithfulness, faithfulness_by_size, is_upstream
from featurelens.intervene.components import (
    Component,
    LogitDifference,
    TokenLoss,
    feature_components,
    head_components,
    neuron_components,
    residual_components,
)
from featurelens.intervene.edits import Patch
from featurelens.intervene.patching import activation_patching, masked_variants
from tests.conftest import POST_NORM_FAMILIES, TINY_FAMILIES, build_tiny_model
from tests.intervene.planted import COPIED, HEAD, NEURON, A, B, planted_model, planted_prompts


@pytest.fixture(scope="module")
def task() -> tuple:
    lm = planted_model()
    clean, corrupt, answers = planted_prompts()
    metric = LogitDifference(answers, torch.where(answers == A, B, A))
    return lm, clean, corrupt, metric


def test_exact_patching_ranks_the_planted_head_and_neuron_first(task: tuple) -> None:
    lm, clean, corrupt, metric = task
    components = head_components(lm) + neuron_components(lm)
    for direction in ("denoise", "noise"):
        result = activation_patching(lm, clean, corrupt, components, metric, direction=direction)
        assert result.clean > 10 and result.corrupt < -10
        (first, e1), (second, e2), (_, e3) = result.ranked(3)
        assert {first.label, second.label} == {f"L0H{HEAD}", f"L0N{NEURON}"}, direction
        assert e1 > 0.95 and e2 > 0.95 and abs(e3) < 0.05, (direction, e1, e2, e3)


def test_batched_patching_equals_one_at_a_time(task: tuple) -> None:
    lm, clean, corrupt, metric = task
    components = head_components(lm, positions=range(8)) + neuron_components(lm, layers=[0])[:6]
    batched = activation_patching(lm, clean, corrupt, components, metric, batch_size=512)
    alone = activation_patching(lm, clean, corrupt, components, metric, batch_size=1)
    torch.testing.assert_close(batched.patched, alone.patched, atol=1e-4, rtol=1e-5)
    heads = [(c.label, e) for c, e in batched.ranked() if c.kind == "head"]
    assert heads[0][0] == f"L0H{HEAD}@7" and heads[0][1] > 0.95  # the head acts at the query position only
    assert abs(heads[1][1]) < 0.05


def test_residual_patching_follows_the_marked_token(task: tuple) -> None:
    lm, clean, corrupt, metric = task
    one_prompt = clean[:1], corrupt[:1]  # its marked token sits at position 1
    position_metric = LogitDifference(metric.correct[:1], metric.wrong[:1])
    result = activation_patching(lm, *one_prompt, residual_components(lm, range(8)), position_metric)
    effects = {c.label: e for c, e in result.ranked()}
    assert effects["L0.resid@1"] == pytest.approx(1.0, abs=0.02)
    assert abs(effects["L0.resid@3"]) < 0.02
    assert effects["L1.resid@7"] == pytest.approx(1.0, abs=0.05)  # by layer 1 the answer sits at Q


def test_attribution_patching_agrees_with_exact_patching(task: tuple) -> None:
    lm, clean, corrupt, metric = task
    components = head_components(lm) + neuron_components(lm)
    exact = activation_patching(lm, clean, corrupt, components, metric)
    estimate = attribution_patching(lm, clean, corrupt, components, metric)
    top_exact = {c.label for c, _ in exact.ranked(2)}
    assert {c.label for c, _ in estimate.ranked(2)} == top_exact
    for component, effect in estimate.ranked(2):  # first order: the final RMSNorm bends the rest (~0.7)
        assert 0.6 < effect < 1.4, (component.label, effect)
    assert estimate.clean == exact.clean and estimate.corrupt == exact.corrupt


def test_the_found_circuit_is_faithful_and_its_complement_is_not(task: tuple) -> None:
    lm, clean, _, metric = task
    components = head_components(lm) + neuron_components(lm)
    circuit = [c for c in components if c.label in {f"L0H{HEAD}", f"L0N{NEURON}"}]
    score = faithfulness(lm, clean, circuit, components, metric)
    assert score.circuit == pytest.approx(1.0, abs=0.05)
    assert abs(score.complement) < 0.05
    decoy = [c for c in components if c.label in {"L1H1", "L0N2"}]
    assert abs(faithfulness(lm, clean, decoy, components, metric).circuit) < 0.1
    ranked = [*circuit, *decoy]
    curve = dict(faithfulness_by_size(lm, clean, ranked, [0, 1, 2, 4], components, metric))
    assert curve[0] == pytest.approx(0.0, abs=1e-9) and abs(curve[1]) < 0.1  # the head alone: gated off
    assert curve[2] == pytest.approx(score.circuit, abs=1e-6) and curve[4] == pytest.approx(1.0, abs=0.05)


def test_other_metrics_and_bad_input(task: tuple) -> None:
    lm, clean, corrupt, metric = task
    loss = TokenLoss(metric.correct)
    result = activation_patching(lm, clean, corrupt, head_components(lm, layers=[0]), loss)
    assert result.clean < result.corrupt and result.ranked(1)[0][0].label == f"L0H{HEAD}"
    with pytest.raises(InterventionError, match="same shape"):
        activation_patching(lm, clean, corrupt[:, :5], head_components(lm), metric)
    with pytest.raises(InterventionError, match=r"layers 0\.\.1"):
        head_components(lm, layers=[2])
    disjoint = faithfulness(lm, clean, neuron_components(lm, layers=[1])[:1], head_components(lm), metric)
    assert disjoint.circuit == 0.0 and disjoint.complement == 1.0  # the circuit holds none of the heads


def test_attribution_is_exact_where_the_metric_is_linear(task: tuple) -> None:
    lm, clean, corrupt, metric = task
    # logits are linear in the final norm's output, so gradient x difference is the exact patching effect
    components = [Component("resid", 2, p, "final_norm", None, p) for p in (5, 7)]
    exact = activation_patching(lm, clean, corrupt, components, metric)
    estimate = attribution_patching(lm, clean, corrupt, components, metric)
    torch.testing.assert_close(estimate.patched, exact.patched, atol=1e-4, rtol=1e-5)
    assert exact.effect[1] == pytest.approx(1.0, abs=1e-6) and exact.effect[0] == pytest.approx(0.0, abs=1e-6)


def test_feature_attributions_and_the_error_term_sum_to_the_hook(task: tuple) -> None:
    lm, clean, corrupt, metric = task
    hook = "layers.0.resid_mid"
    torch.manual_seed(0)
    sae = TopKDictionary(32, 64, k=4, hook_in=hook)
    features = feature_components(sae)
    whole = Component("resid", 0, 0, hook, None, None)
    result = attribution_patching(lm, clean, corrupt, [*features, whole], metric, dictionaries=[sae])
    parts = result.patched[:-1] - result.corrupt
    assert float(parts.sum()) == pytest.approx(float(result.patched[-1] - result.corrupt), rel=1e-4)
    assert abs(float(parts[-1])) > 0  # a random SAE leaves a real error term
    # the neurons as a dictionary: the planted path runs through channel COPIED of resid_mid
    channels = attribution_patching(
        lm,
        clean,
        corrupt,
        feature_components(IdentityDictionary(32, hook)),
        metric,
        dictionaries=[IdentityDictionary(32, hook)],
    )
    top, effect = channels.ranked(1)[0]
    assert top.label == f"L0F{COPIED}" and effect > 0.5
    with pytest.raises(InterventionError, match="need their dictionary"):
        attribution_patching(lm, clean, corrupt, features, metric)


@pytest.mark.parametrize("family", sorted(set(TINY_FAMILIES) - POST_NORM_FAMILIES))
def test_skipping_the_unedited_layers_changes_nothing(family: str) -> None:
    lm = fl.LanguageModel(build_tiny_model(family), None)
    generator = torch.Generator().manual_seed(0)
    clean, corrupt = (torch.randint(3, 96, (3, 6), generator=generator) for _ in range(2))
    metric = LogitDifference(torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10]))
    components = head_components(lm, layers=[1, 2]) + neuron_components(lm, layers=[2], neurons=[0, 3])
    components += residual_components(lm, positions=[2], layers=[1, 2])
    components += head_components(lm, layers=[0, 2], positions=[1, 4, 5])  # runs from a KV-cached prefix
    cache = lm.capture(clean, sorted({c.hook for c in components}, key=list(lm.hook_points).index))

    def patch(hook: str, mask: torch.Tensor, _chunk: object) -> Patch:
        return Patch(cache[hook].repeat(mask.shape[0] // 3, 1, 1), mask=mask)

    groups = [[c] for c in components]
    skipped = masked_variants(lm, corrupt, groups, patch, metric, batch_size=6)
    full = masked_variants(lm, corrupt, groups, patch, metric, batch_size=6, skip_unedited_layers=False)
    torch.testing.assert_close(skipped, full, atol=1e-5, rtol=1e-5)
    assert float((full - full.mean()).abs().max()) > 1e-3  # the patches do differ


def test_patches_that_change_nothing_keep_the_base_metric(task: tuple) -> None:
    lm, clean, corrupt, metric = task
    shared = 1  # the prompts differ from their marked token on
    agree = torch.equal(clean[:, :shared], corrupt[:, :shared]) and not torch.equal(
        clean[:, 1], corrupt[:, 1]
    )
    assert agree
    components = head_components(lm, positions=range(8))
    result = activation_patching(lm, clean, corrupt, components, metric)
    counted: list[int] = []
    activation_patching(lm, clean, corrupt, components, metric, on_variants=counted.append)
    assert sum(counted) == len(components)
    cache = lm.capture(clean, ["layers.0.attn_heads", "layers.1.attn_heads"])

    def patch(hook: str, mask: torch.Tensor, _chunk: object) -> Patch:
        return Patch(cache[hook].repeat(mask.shape[0] // len(clean), 1, 1), mask=mask)

    ran = masked_variants(lm, corrupt, [[c] for c in components], patch, metric, skip_unedited_layers=False)
    torch.testing.assert_close(result.patched, ran, atol=1e-4, rtol=1e-5)
    at_start = [i for i, c in enumerate(components) if c.position is not None and c.position < shared]
    assert at_start and all(float(result.patched[i]) == result.corrupt for i in at_start)


def test_exact_feature_patching_finds_the_planted_channel(task: tuple) -> None:
    lm, clean, corrupt, metric = task
    hook = "layers.0.resid_mid"
    identity = IdentityDictionary(32, hook)  # its features are the channels, its error term is zero
    features = feature_components(identity)
    exact = activation_patching(lm, clean, corrupt, features, metric, dictionaries=[identity])
    (top, effect), (_, second) = exact.ranked(2)
    assert top.label == f"L0F{COPIED}" and effect > 0.95 and abs(second) < 0.05
    assert float(exact.patched[-1]) == exact.corrupt  # the error term never changes: not even run
    units = [Component("resid", 0, j, hook, (j,), None) for j in range(32)]
    channels = activation_patching(lm, clean, corrupt, units, metric)
    torch.testing.assert_close(exact.patched[:-1], channels.patched, atol=1e-5, rtol=1e-5)
    torch.manual_seed(0)
    sae = TopKDictionary(32, 64, k=4, hook_in=hook)
    some = feature_components(sae, range(0, 64, 8))
    estimate = attribution_patching(lm, clean, corrupt, some, metric, dictionaries=[sae])
    measured = activation_patching(lm, clean, corrupt, some, metric, dictionaries=[sae])
    assert float(measured.patched[-1]) != measured.corrupt  # a random SAE leaves a real error term
    assert torch.corrcoef(torch.stack([estimate.patched, measured.patched]))[0, 1] > 0.5
    with pytest.raises(InterventionError, match="need their dictionary"):
        activation_patching(lm, clean, corrupt, some, metric)


def test_edge_attribution_finds_the_planted_edge(task: tuple) -> None:
    lm, clean, corrupt, metric = task
    nodes = head_components(lm) + neuron_components(lm)
    for direction in ("denoise", "noise"):
        edges = edge_attribution(lm, clean, corrupt, nodes, metric, direction=direction)
        assert all(is_upstream(lm, u, v) for u, v, _ in edges)
        ranked = sorted(edges, key=lambda edge: -abs(edge[2]))
        (u, v, share), (_, _, second) = ranked[:2]
        assert (u.label, v.label) == (f"L0H{HEAD}", f"L0N{NEURON}"), direction
        assert 0.5 < share < 1.5 and abs(second) < 0.1, (direction, share, second)
    with pytest.raises(InterventionError, match="between heads and neurons"):
        edge_attribution(lm, clean, corrupt, residual_components(lm, [1]), metric)
