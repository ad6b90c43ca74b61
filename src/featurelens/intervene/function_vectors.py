"""Function vectors: the task an in-context prompt teaches, as one vector made from a few attention heads.

In-context prompts (``Q: hot\\nA: cold\\nQ: big\\nA: small\\n...\\nQ: up\\nA:``) make a model do a task. The
heads that carry it are found by patching: each head's mean output at the last token over in-context
prompts is written into the same prompts with their demonstration labels shuffled (which show the format
but not the task), and the head's effect is the rise in the probability of the right answer. The function
vector is the sum of the top heads' mean contributions to the residual stream; added at one layer's output
at the last token of a zero-shot prompt (``Q: up\\nA:``) it makes the model do the task without any
demonstration. Answers are graded on their first token.

Each patched variant only changes the last token, so every variant runs that one token on the KV cache of
the shuffled prompts (models whose cache is not a plain one recompute the prompt).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from featurelens.intervene.context import intervening, model_inputs
from featurelens.intervene.edits import Add, Edit, InterventionError, Mean
from featurelens.intervene.heads import head_contributions, head_layout
from featurelens.intervene.patching import cache_keyword, prefix_cache, repeated_cache
from featurelens.intervene.records import read_records
from featurelens.intervene.vectors import SteeringVector
from featurelens.models import LanguageModel
from featurelens.models.tracing import recording

TEMPLATE = "Q: {x}\nA:{y}"
Pair = tuple[str, str]

_ANTONYMS = (
    "hot cold,big small,up down,fast slow,happy sad,rich poor,good bad,early late,hard soft,high low,"
    "long short,open closed,strong weak,wet dry,thick thin,full empty,loud quiet,clean dirty,true false,"
    "win lose,love hate,push pull,inside outside,buy sell,day night,black white,north south,east west,"
    "yes no,top bottom,left right,start end,alive dead,cheap expensive,safe dangerous,young old,first last"
)
_PAST = (
    "go went,eat ate,see saw,run ran,take took,give gave,write wrote,speak spoke,drink drank,sing sang,"
    "swim swam,come came,buy bought,think thought,teach taught,catch caught,fly flew,know knew,grow grew,"
    "draw drew,drive drove,ride rode,break broke,choose chose,forget forgot,sleep slept,keep kept,"
    "feel felt,leave left,meet met,sit sat,stand stood,win won,tell told,sell sold,find found,make made,"
    "pay paid,say said,bring brought"
)
_PLURAL = (
    "cat cats,dog dogs,child children,man men,woman women,mouse mice,foot feet,tooth teeth,box boxes,"
    "city cities,baby babies,knife knives,leaf leaves,wolf wolves,goose geese,person people,bus buses,"
    "house houses,book books,car cars,tree trees,bird birds,horse horses,apple apples,party parties,"
    "story stories,glass glasses,church churches,life lives,wife wives"
)


def _pairs(text: str) -> tuple[Pair, ...]:
    return tuple((a, b) for a, b in (item.split() for item in text.split(",")))


BUILT_IN_TASKS: dict[str, tuple[Pair, ...]] = {
    "antonym": _pairs(_ANTONYMS),
    "past-tense": _pairs(_PAST),
    "plural": _pairs(_PLURAL),
    "uppercase": tuple((c, c.upper()) for c in "abcdefghijklmnopqrstuvwxyz"),
}


def read_task(spec: str) -> tuple[Pair, ...]:
    """A built-in task by name, or a JSON-lines file of ``{"input": ..., "output": ...}``."""
    if spec in BUILT_IN_TASKS:
        return BUILT_IN_TASKS[spec]
    if not Path(spec).is_file():
        raise InterventionError(
            f"{spec} is neither a built-in task ({', '.join(BUILT_IN_TASKS)}) nor a JSON-lines file"
        )
    records = read_records(spec, ("input", "output"), "task file")
    return tuple((record["input"], record["output"]) for record in records)


def icl_prompt(demonstrations: Sequence[Pair], query: str) -> str:
    """``Q: x\\nA: y`` lines for each demonstration, then ``Q: query\\nA:`` (no demonstrations: zero-shot)."""
    lines = [TEMPLATE.format(x=x, y=f" {y}") for x, y in demonstrations]
    return "\n".join([*lines, TEMPLATE.format(x=query, y="")])


def icl_prompts(
    pool: Sequence[Pair], queries: Sequence[Pair], shots: int, seed: int, *, shuffled: bool = False
) -> list[str]:
    """One prompt per query with ``shots`` demonstrations drawn from ``pool`` (never the query itself);
    ``shuffled`` permutes the demonstrations' answers among them (the same draws either way)."""
    rng, shuffler = random.Random(seed), random.Random(seed + 1)
    prompts = []
    for x, _ in queries:
        others = [pair for pair in pool if pair[0] != x]
        if len(others) < shots:
            raise InterventionError(f"{shots} demonstrations need {shots + 1} or more task pairs")
        demonstrations = rng.sample(others, shots)
        if shuffled:
            answers = [y for _, y in demonstrations]
            shuffler.shuffle(answers)
            demonstrations = [(d[0], y) for d, y in zip(demonstrations, answers, strict=True)]
        prompts.append(icl_prompt(demonstrations, x))
    return prompts


@dataclass(frozen=True)
class Encoded:
    """Left-padded prompts: ``ids`` and ``mask`` [n, seq] (the last column is every prompt's last token)
    and the first token of each right answer, ``answers`` [n]."""

    ids: torch.Tensor
    mask: torch.Tensor
    answers: torch.Tensor


def encode(lm: LanguageModel, prompts: Sequence[str], answers: Sequence[str]) -> Encoded:
    """Token ids of ``prompts`` (left-padded) and the first token of `` answer`` for each."""
    rows = [lm.tokenizer.encode(prompt) for prompt in prompts]
    width = max(len(row) for row in rows)
    pad = getattr(lm.tokenizer, "pad_token_id", None) or getattr(lm.tokenizer, "eos_token_id", None) or 0
    ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    first = [lm.tokenizer.encode(f" {answer}", add_special_tokens=False) for answer in answers]
    if any(not tokens for tokens in first):
        raise InterventionError("every task output must be non-empty text")
    return Encoded(ids, mask, torch.tensor([tokens[0] for tokens in first]))


def last_token_logits(
    lm: LanguageModel, prompts: Encoded, edits: Mapping[str, Edit | Sequence[Edit]] | None = None
) -> torch.Tensor:
    """Logits [n, vocab] after each prompt, with ``edits`` applied at its last token."""
    with torch.inference_mode():
        if not edits:
            return lm.model(**model_inputs(lm, prompts.ids, prompts.mask), logits_to_keep=1).logits[:, -1]
        with intervening(lm, edits, positions=[-1]):
            return lm.model(**model_inputs(lm, prompts.ids, prompts.mask), logits_to_keep=1).logits[:, -1]


def accuracy(lm: LanguageModel, prompts: Encoded, edits: Mapping[str, Edit] | None = None) -> float:
    """Fraction of prompts whose most likely next token is the first token of the right answer."""
    logits = last_token_logits(lm, prompts, edits)
    return float((logits.argmax(-1).cpu() == prompts.answers).double().mean())


def mean_head_outputs(lm: LanguageModel, prompts: Encoded, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """Each layer's mean ``attn_heads`` [n_heads * head_dim] at the prompts' last token."""
    points = [lm.hook_point(f"layers.{layer}.attn_heads") for layer in layers]
    with torch.inference_mode(), recording(points) as kept:
        lm.model(**model_inputs(lm, prompts.ids, prompts.mask), logits_to_keep=1)
    return {
        layer: kept[p.name][:, -1].double().mean(0).float() for layer, p in zip(layers, points, strict=True)
    }


def head_effects(
    lm: LanguageModel,
    prompts: Encoded,
    means: Mapping[int, torch.Tensor],
    *,
    batch_size: int = 64,
    on_variants: Callable[[int], None] | None = None,
) -> dict[tuple[int, int], float]:
    """For every head of the layers in ``means``: the mean rise in the probability of the right answer when
    its output at the last token of ``prompts`` becomes its mean in ``means`` (from in-context prompts)."""
    n = prompts.ids.shape[0]
    heads = [(layer, head) for layer in means for head in range(head_layout(lm, layer)[0])]
    prefix = prefix_cache(lm, prompts.ids[:, :-1], prompts.mask[:, :-1]) if prompts.ids.shape[1] > 1 else []

    def probabilities(logits: torch.Tensor, rows: int) -> torch.Tensor:
        answers = prompts.answers.repeat(rows // n).to(logits.device)
        return logits.float().softmax(-1).gather(1, answers[:, None])[:, 0].double().cpu()

    base = float(probabilities(last_token_logits(lm, prompts), n).mean())
    per_batch = max(1, batch_size // n)
    effects: dict[tuple[int, int], float] = {}
    for start in range(0, len(heads), per_batch):
        chunk = heads[start : start + per_batch]
        masks = {
            layer: torch.zeros(len(chunk) * n, means[layer].numel(), dtype=torch.bool) for layer, _ in chunk
        }
        for g, (layer, head) in enumerate(chunk):
            head_dim = head_layout(lm, layer)[1]
            masks[layer][g * n : (g + 1) * n, head * head_dim : (head + 1) * head_dim] = True
        edits = {f"layers.{layer}.attn_heads": Mean(means[layer], mask=mask) for layer, mask in masks.items()}
        inputs: dict[str, Any] = model_inputs(
            lm, prompts.ids.repeat(len(chunk), 1), prompts.mask.repeat(len(chunk), 1)
        )
        with torch.inference_mode():
            if prefix:  # only the last token changes: run it alone on the prompts' cache
                inputs["input_ids"] = inputs["input_ids"][:, -1:]
                inputs["position_ids"] = inputs["position_ids"][:, -1:]
                inputs[cache_keyword(lm)] = repeated_cache(prefix, prompts.ids.shape[1] - 1, len(chunk))
                with intervening(lm, edits):
                    logits = lm.model(**inputs, use_cache=True).logits[:, -1]
            else:
                with intervening(lm, edits, positions=[-1]):
                    logits = lm.model(**inputs, logits_to_keep=1).logits[:, -1]
        rises = probabilities(logits, len(chunk) * n).reshape(len(chunk), n).mean(1) - base
        effects |= {head: float(rise) for head, rise in zip(chunk, rises, strict=True)}
        if on_variants is not None:
            on_variants(len(chunk))
    return effects


def function_vector(
    lm: LanguageModel, means: Mapping[int, torch.Tensor], heads: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """The sum [d_model] of ``heads``' mean contributions to the residual stream (through W_O)."""
    total = None
    for layer, head in heads:
        contribution = head_contributions(lm, layer, means[layer][None, None].to(lm.device))[0, 0, head]
        total = contribution if total is None else total + contribution
    if total is None:
        raise InterventionError("a function vector needs one head or more")
    return total.detach().float().cpu()


@dataclass(frozen=True)
class FunctionVectorReport:
    """What :func:`function_vector_experiment` found: the ranked heads ``(layer, head, effect)``, the
    accuracy of held-out queries in-context, with shuffled labels, zero-shot, and zero-shot with the
    vector added at each tried layer (``by_layer``: layer, accuracy on the training queries, held-out
    accuracy), and the vector at the layer the training queries chose."""

    task: str
    shots: int
    train_pairs: int
    test_pairs: int
    heads: list[tuple[int, int, float]]
    top_heads: int
    by_layer: list[tuple[int, float, float]]
    layer: int
    icl: float
    shuffled: float
    zero_shot: float
    zero_shot_with_vector: float
    vector: SteeringVector

    @property
    def gain(self) -> float:
        """Held-out zero-shot accuracy gained by adding the vector."""
        return self.zero_shot_with_vector - self.zero_shot

    def to_dict(self) -> dict[str, Any]:
        fields = {k: v for k, v in asdict(self).items() if k != "vector"}
        return {**fields, "gain": self.gain, "vector": self.vector.meta()}


def function_vector_experiment(
    lm: LanguageModel,
    pairs: Sequence[Pair],
    *,
    task: str = "custom",
    shots: int = 5,
    prompts: int = 16,
    top_heads: int = 10,
    layers: Sequence[int] | None = None,
    add_layers: Sequence[int] | None = None,
    test_fraction: float = 0.3,
    seed: int = 0,
    batch_size: int = 64,
    on_variants: Callable[[int], None] | None = None,
) -> FunctionVectorReport:
    """Find the heads that carry ``pairs``' task, make its function vector and measure what it does.

    The pairs are split (seeded) into training pairs, which make every in-context prompt's
    demonstrations, the head means and effects (on ``prompts`` queries), and held-out test pairs, whose
    queries are only ever answered. Heads of ``layers`` (default all) are ranked; the vector sums the
    ``top_heads`` first; it is added at the output of each of ``add_layers`` (default: every third layer
    of the first two thirds), the layer is chosen on the training queries and reported on the held-out
    ones."""
    pairs = list(dict.fromkeys(pairs))
    if not 0 < test_fraction < 1:
        raise InterventionError(f"test_fraction must be between 0 and 1, not {test_fraction}")
    rng = random.Random(seed)
    order = rng.sample(pairs, len(pairs))
    n_test = max(1, round(len(order) * test_fraction))
    train, test = order[n_test:], order[:n_test]
    if len(train) < shots + 1 or shots < 1:
        raise InterventionError(
            f"{len(pairs)} task pairs are too few for {shots} demonstrations and a held-out split; give "
            f"{round((shots + 2) / (1 - test_fraction))} or more (and --shots of 1 or more)"
        )
    all_layers = list(range(lm.n_layers))
    chosen = all_layers if layers is None else list(layers)
    tried = list(range(0, max(1, 2 * lm.n_layers // 3), 3)) if add_layers is None else list(add_layers)
    bad = [layer for layer in [*chosen, *tried] if layer not in all_layers]
    if bad or not chosen or not tried:
        raise InterventionError(f"layers {bad or '[]'} are not layers 0..{lm.n_layers - 1}")
    queries = [train[i % len(train)] for i in range(prompts)]
    clean = encode(lm, icl_prompts(train, queries, shots, seed), [y for _, y in queries])
    scrambled = encode(lm, icl_prompts(train, queries, shots, seed, shuffled=True), [y for _, y in queries])
    means = mean_head_outputs(lm, clean, chosen)
    effects = head_effects(lm, scrambled, means, batch_size=batch_size, on_variants=on_variants)
    ranked = sorted(effects.items(), key=lambda item: -item[1])
    vector = function_vector(lm, means, [head for head, _ in ranked[:top_heads]])

    def zero_shot(split: Sequence[Pair]) -> Encoded:
        return encode(lm, [icl_prompt([], x) for x, _ in split], [y for _, y in split])

    train_zero, test_zero = zero_shot(train), zero_shot(test)
    by_layer = []
    for layer in tried:
        edits = {f"layers.{layer}.resid_post": Add(vector.to(lm.device))}
        by_layer.append((layer, accuracy(lm, train_zero, edits), accuracy(lm, test_zero, edits)))
    best = max(by_layer, key=lambda row: row[1])
    answers = [y for _, y in test]
    return FunctionVectorReport(
        task=task,
        shots=shots,
        train_pairs=len(train),
        test_pairs=len(test),
        heads=[(layer, head, effect) for (layer, head), effect in ranked],
        top_heads=top_heads,
        by_layer=by_layer,
        layer=best[0],
        icl=accuracy(lm, encode(lm, icl_prompts(train, test, shots, seed + 1), answers)),
        shuffled=accuracy(lm, encode(lm, icl_prompts(train, test, shots, seed + 1, shuffled=True), answers)),
        zero_shot=accuracy(lm, test_zero),
        zero_shot_with_vector=best[2],
        vector=SteeringVector(vector, f"layers.{best[0]}.resid_post", "function-vector", lm.name, len(train)),
    )
