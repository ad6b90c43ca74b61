"""Prompts for explaining and scoring features, and robust reading of the explainer's reply.

Example text is sanitised before it goes into a prompt: the marker characters ``<<`` / ``>>`` and the
word ``Explanation:`` inside a corpus token are replaced by look-alikes, so text from the corpus can neither
fake a marked token nor fake the explainer's answer line.
"""

from __future__ import annotations

import re

from featurelens.atlas import Context
from featurelens.explain.client import ClientError, Messages

OPEN, CLOSE = "<<", ">>"
MAX_EXPLANATION_CHARS = 200
_ANSWER = re.compile(r"^[\s*_#>-]*explanation[\s*_]*:[\s*_]*", re.IGNORECASE)

EXPLAIN_SYSTEM = (
    "You are studying one feature of a neural network. You see excerpts of text; the tokens where the "
    f"feature is active are marked like {OPEN}this{CLOSE}. Say what the marked tokens have in common, in one "
    "short phrase of at most 15 words. Answer with a single line that starts with 'Explanation:'."
)
DETECTION_SYSTEM = (
    "A feature of a neural network is described as: {explanation}\n"
    "You decide whether the feature is active anywhere in a text. Answer Yes or No."
)
FUZZING_SYSTEM = (
    "A feature of a neural network is described as: {explanation}\n"
    f"In a text, some tokens are marked like {OPEN}this{CLOSE}. Decide whether the marked tokens are the "
    "ones the feature is active on. Answer Yes or No."
)


def clean_token(text: str) -> str:
    """A corpus token made safe to quote: no markers, no answer label, newlines shown as ↵."""
    text = text.replace(OPEN, "‹‹").replace(CLOSE, "››").replace("\n", "↵")
    return re.sub(r"(?i)explanation\s*:", "explanation -", text)


def render(context: Context, marked: set[int] | None = None) -> str:
    """The context's text with the tokens at ``marked`` positions (default: where it is active) marked."""
    if marked is None:
        marked = {i for i, value in enumerate(context.activations) if value > 0}
    return "".join(
        f"{OPEN}{clean_token(t)}{CLOSE}" if i in marked else clean_token(t)
        for i, t in enumerate(context.tokens)
    )


def explain_messages(examples: list[Context]) -> Messages:
    lines = [f"{i + 1}. {render(context)}" for i, context in enumerate(examples)]
    user = "Examples:\n" + "\n".join(lines) + "\n\nWhat do the marked tokens have in common?"
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": user}]


def detection_messages(explanation: str, context: Context) -> Messages:
    text = "".join(clean_token(t) for t in context.tokens)
    return [
        {"role": "system", "content": DETECTION_SYSTEM.format(explanation=explanation)},
        {"role": "user", "content": f"Text: {text}\nIs the feature active anywhere in this text? Yes or No?"},
    ]


def fuzzing_messages(explanation: str, context: Context, marked: set[int]) -> Messages:
    return [
        {"role": "system", "content": FUZZING_SYSTEM.format(explanation=explanation)},
        {
            "role": "user",
            "content": f"Text: {render(context, marked)}\nAre the marked tokens the ones? Yes or No?",
        },
    ]


def parse_explanation(reply: str) -> str:
    """The explanation in a reply: the text after the last ``Explanation:`` label, else the last non-empty
    line; quotes and markdown trimmed, at most :data:`MAX_EXPLANATION_CHARS` characters."""
    lines = [line.strip() for line in reply.splitlines() if line.strip()]
    labelled = [line for line in lines if _ANSWER.match(line)]
    chosen = _ANSWER.sub("", labelled[-1]) if labelled else (lines[-1] if lines else "")
    chosen = re.sub(r"^(\d+[.)]|[-*•])\s+", "", chosen.strip())  # a list item's number or bullet
    chosen = chosen.replace(OPEN, "").replace(CLOSE, "").replace("**", "")
    chosen = chosen.strip().strip("*_`\"'“”").strip()
    chosen = re.sub(r"\s+", " ", chosen)[:MAX_EXPLANATION_CHARS].strip()
    if not chosen:
        raise ClientError("the explainer's reply holds no explanation")
    return chosen
