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


EXPLAIN_QUESTION = "What do the marked tokens have in common?"
EMPTY_ANSWERS = {  # replies as lowercase words joined by spaces ("N/A" -> "n a")
    *("", "none", "nothing", "unknown", "n a", "na", "not sure", "unclear", "no pattern"),
    *("i don't know", "i do not know", "i'm not sure", "nothing in common"),
}
ECHO_WORDS = 5  # this many consecutive words of the instructions in an explanation make it an echo


def explain_messages(examples: list[Context]) -> Messages:
    lines = [f"{i + 1}. {render(context)}" for i, context in enumerate(examples)]
    user = "Examples:\n" + "\n".join(lines) + f"\n\n{EXPLAIN_QUESTION}"
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


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _ngram_counts(words: list[str], n: int) -> int:
    """How often the most frequent run of ``n`` consecutive words occurs in ``words``."""
    runs = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return max((runs.count(run) for run in set(runs)), default=0)


def degenerate_reason(explanation: str) -> str | None:
    """Why a parsed explanation is no explanation (``None`` if it is one).

    Three failures of small explainers, each recorded as a skip rather than shown: a reply that **repeats
    itself** (a word pair three times, a word triple twice, or under half of 8+ words distinct: a generation
    loop), one that **echoes the instructions** (5 consecutive words of the explain prompt's system text or
    question) and one that **says nothing** (no letters, or only "none", "unknown", "I don't know", ...).
    """
    words = _words(explanation)
    if " ".join(words) in EMPTY_ANSWERS or not re.search(r"[^\W\d_]", explanation):
        return f"the explainer said nothing ({explanation!r})"
    if (
        _ngram_counts(words, 2) >= 3
        or _ngram_counts(words, 3) >= 2
        or (len(words) >= 8 and len(set(words)) < len(words) / 2)
    ):
        return f"the explainer's reply repeats itself ({explanation[:60]!r})"
    instructions = _words(f"{EXPLAIN_SYSTEM} {EXPLAIN_QUESTION}")
    echoed = {tuple(instructions[i : i + ECHO_WORDS]) for i in range(len(instructions) - ECHO_WORDS + 1)}
    if any(tuple(words[i : i + ECHO_WORDS]) in echoed for i in range(len(words) - ECHO_WORDS + 1)):
        return f"the explainer echoed its instructions ({explanation[:60]!r})"
    return None
