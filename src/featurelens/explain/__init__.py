"""Stage 5: explain features automatically and score the explanations, always against a baseline."""

from featurelens.explain.client import (
    ClientError,
    EndpointClient,
    LanguageModelClient,
    LocalClient,
    ResponseCache,
    YesNo,
)
from featurelens.explain.pipeline import ExplainJob, ExplainSummary, explain_atlas

__all__ = [
    "ClientError",
    "EndpointClient",
    "ExplainJob",
    "ExplainSummary",
    "LanguageModelClient",
    "LocalClient",
    "ResponseCache",
    "YesNo",
    "explain_atlas",
]
