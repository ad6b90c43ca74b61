"""The baseline explanation: no language model, instant, built from token statistics of the examples.

For the tokens a feature is active on in its examples, the lift is (share of examples whose active token
is t) / (share of all mapped tokens that are t). The explanation names the most common tokens with a lift of
at least :data:`MIN_LIFT` (up to :data:`MAX_TOKENS`), the token that usually precedes them when one does (an
n-gram pattern), and the tokens the feature's decoder promotes, rendered as a short phrase such as
``fires on "Decimal", "Enum" (often after "."); promotes "al", "points"``.
"""

from __future__ import annotations

from collections import Counter

from featurelens.atlas import Context, Feature

MIN_LIFT = 2.0
MAX_TOKENS = 4
MIN_PRECEDING_SHARE = 0.4


def describe(text: str) -> str:
    """A token as it reads in a phrase: quoted (“curly” when it holds a straight quote), whitespace named."""
    if not text.strip():
        return "a line break" if "\n" in text else "whitespace"
    return f"“{text.strip()}”" if '"' in text else f'"{text.strip()}"'


def _active_token_ids(context: Context) -> list[int]:
    return [t for t, value in zip(context.token_ids, context.activations, strict=True) if value > 0]


def baseline_explanation(
    feature: Feature, examples: list[Context], background: Counter[int], vocab: dict[int, str]
) -> str:
    """A phrase from the active tokens of ``examples`` against ``background`` token counts."""
    total = max(1, sum(background.values()))
    active = Counter(t for context in examples for t in set(_active_token_ids(context)))
    n = max(1, len(examples))
    lifted = [
        (count, token)
        for token, count in active.items()
        if (count / n) / max(background.get(token, 0) / total, 1.0 / total) >= MIN_LIFT
    ]
    chosen = [token for _, token in sorted(lifted, key=lambda pair: (-pair[0], pair[1]))[:MAX_TOKENS]]
    if not chosen:
        chosen = [token for token, _ in active.most_common(2)]
    words = list(dict.fromkeys(describe(vocab.get(t, f"<{t}>")) for t in chosen))
    parts = [f"fires on {', '.join(words)}" if words else "fires rarely"]
    preceding = Counter(
        context.token_ids[context.centre - 1] for context in examples if context.centre > 0
    ).most_common(1)
    if preceding and preceding[0][1] / n >= MIN_PRECEDING_SHARE and preceding[0][0] not in chosen:
        parts[0] += f" (often after {describe(vocab.get(preceding[0][0], ''))})"
    promoted = [describe(t.text) for t in feature.output_top[:3]]
    if promoted:
        parts.append(f"promotes {', '.join(promoted)}")
    return "; ".join(parts)
