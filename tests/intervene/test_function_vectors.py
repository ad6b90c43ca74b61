"""Function vectors: head effects find the planted head that carries the answer, batched effects on a KV
cache equal one head at a time recomputed, the vector makes prompts without a cue answer, and the verb on
the bundled model finds the head it was measured to find."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import featurelens as fl
from featurelens.intervene import InterventionError, Mean, SteeringVector, head_channels
from featurelens.intervene.edits import Add
from featurelens.intervene.function_vectors import (
    Encoded,
    accuracy,
    function_vector,
    head_effects,
    icl_prompt,
    icl_prompts,
    last_token_logits,
    mean_head_outputs,
    read_task,
)
from tests.conftest import POST_NORM_FAMILIES, TINY_FAMILIES, build_tiny_model
from tests.intervene.planted import FILLERS, HEAD, QUERY, A, planted_model, planted_prompts
from tests.intervene.test_circuit_cli import featurelens


def _unpadded(ids: torch.Tensor, answer: int) -> Encoded:
    return Encoded(ids, torch.ones_like(ids), torch.full((len(ids),), answer))


def test_the_planted_head_carries_the_answer_and_its_vector_gives_it() -> None:
    lm = planted_model()
    clean, corrupt, answers = planted_prompts(n=12)
    cued = _unpadded(clean[answers == A], A)  # they hold A*: the model answers A
    miscued = _unpadded(corrupt[answers == A], A)  # the same prompts holding B*: it answers B
    means = mean_head_outputs(lm, cued, [0, 1])
    effects = head_effects(lm, miscued, means)
    ranked = sorted(effects.items(), key=lambda item: -item[1])
    (top, rise), (_, second) = ranked[:2]
    assert top == (0, HEAD) and rise > 0.9 and abs(second) < 0.05, ranked[:3]
    assert accuracy(lm, cued) == 1.0 and accuracy(lm, miscued) == 0.0
    # no cue at all: fillers then Q; the head's mean contribution added before layer 0 supplies it
    uncued = _unpadded(
        torch.tensor([[FILLERS[i], FILLERS[i + 1], FILLERS[i + 2], QUERY] for i in range(6)]), A
    )
    vector = function_vector(lm, means, [(0, HEAD)])
    edits = {"layers.0.resid_pre": Add(vector)}
    before = last_token_logits(lm, uncued).softmax(-1)[:, A]
    after = last_token_logits(lm, uncued, edits).softmax(-1)[:, A]
    assert accuracy(lm, uncued, edits) == 1.0 and float((after - before).min()) > 0.5


@pytest.mark.parametrize("family", sorted(set(TINY_FAMILIES) - POST_NORM_FAMILIES))
def test_batched_effects_on_the_cache_equal_one_head_at_a_time(family: str) -> None:
    lm = fl.LanguageModel(build_tiny_model(family), None)
    generator = torch.Generator().manual_seed(1)
    lengths = [7, 4, 6]
    ids = torch.zeros(3, 7, dtype=torch.long)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for row, length in enumerate(lengths):  # left padding
        ids[row, 7 - length :] = torch.randint(3, 96, (length,), generator=generator)
        mask[row, 7 - length :] = 1
    prompts = Encoded(ids, mask, torch.tensor([5, 9, 11]))
    layers = [0, lm.n_layers - 1]
    width = {layer: mean_head_outputs(lm, prompts, [layer])[layer].numel() for layer in layers}
    means = {layer: torch.randn(width[layer], generator=generator) for layer in layers}
    batched = head_effects(lm, prompts, means, batch_size=7)  # chunks of 2 heads

    def probability(edits: dict | None) -> float:
        return float(
            last_token_logits(lm, prompts, edits).softmax(-1).gather(1, prompts.answers[:, None]).mean()
        )

    base = probability(None)
    for (layer, head), effect in batched.items():
        mask_h = head_channels(lm, layer, [head])
        alone = probability({f"layers.{layer}.attn_heads": Mean(means[layer], mask=mask_h)}) - base
        assert effect == pytest.approx(alone, abs=2e-6), (family, layer, head)
    assert max(abs(e) for e in batched.values()) > 1e-4  # the patches do move the answer


def test_prompts_tasks_and_bad_input(tmp_path: Path) -> None:
    pairs = read_task("past-tense")
    assert ("go", "went") in pairs and len(pairs) >= 30
    assert icl_prompt([("go", "went")], "eat") == "Q: go\nA: went\nQ: eat\nA:"
    plain = icl_prompts(pairs, pairs[:4], 3, seed=0)
    shuffled = icl_prompts(pairs, pairs[:4], 3, seed=0, shuffled=True)
    assert all(p.endswith(f"Q: {x}\nA:") for p, (x, _) in zip(plain, pairs[:4], strict=True))
    assert all(f"Q: {x}\n" not in p[:-8] for p, (x, _) in zip(plain, pairs[:4], strict=True))  # not a demo
    strip = lambda p: sorted(line for line in p.split("\n") if line.startswith("A: "))  # noqa: E731
    assert [strip(p) for p in plain] == [strip(p) for p in shuffled] and plain != shuffled
    task = tmp_path / "task.jsonl"
    task.write_text('{"input": "a", "output": "b"}\n{"input": "c"}\n')
    with pytest.raises(InterventionError, match=r"task\.jsonl:2 needs string fields input, output"):
        read_task(str(task))
    with pytest.raises(InterventionError, match="neither a built-in task"):
        read_task("no-such-task")


@pytest.mark.slow
def test_the_verb_finds_the_past_tense_head_of_the_bundled_model(tmp_path: Path) -> None:
    out = tmp_path / "fv"
    result = featurelens(
        "function-vector",
        "--layers",
        "14,18,20,24",
        "--add-layers",
        "15",
        "--prompts",
        "8",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["heads"][0][:2] == [20, 5], report["heads"][:3]  # measured: L20H5 carries past tense
    assert report["zero_shot"] == 0.0 and report["gain"] > 0.3, report
    vector = SteeringVector.load(out / "vector")
    assert vector.hook == "layers.15.resid_post" and vector.method == "function-vector"
    for args, message in (
        (["--task", "nope"], "neither a built-in task"),
        (["--shots", "0"], "--shots must be 1 or more"),
        (["--layers", "3,x"], "is not a comma list of layer numbers"),
        (["--layers", "99"], "are not layers 0..29"),
    ):
        bad = featurelens("function-vector", *args, "--out", str(tmp_path / "bad"))
        assert bad.returncode == 2 and message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
