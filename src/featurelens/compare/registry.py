"""Every measure by name, and measure specs as the CLI writes them: ``name`` or ``name:option=value,...``.

>>> measure_from_spec("shape:alpha=0.5")      # the angular shape metric with partial whitening 0.5
>>> measure_from_spec("rsa:method=kendall,distance=euclidean")
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

from featurelens.compare.cca import cca_measure, pwcca_measure, svcca_measure
from featurelens.compare.cka import kernel_cka_measure, linear_cka_measure
from featurelens.compare.measure import Measure
from featurelens.compare.neighbors import cknna_measure, mutual_knn_measure
from featurelens.compare.relative import relative_measure
from featurelens.compare.rsa import rsa_measure
from featurelens.compare.shape import procrustes_measure, shape_measure
from featurelens.errors import CompareError

MEASURES: dict[str, Callable[..., Measure]] = {
    "cka": partial(linear_cka_measure, debiased=True),
    "cka-biased": partial(linear_cka_measure, debiased=False),
    "kernel-cka": kernel_cka_measure,
    "cca": cca_measure,
    "svcca": svcca_measure,
    "pwcca": pwcca_measure,
    "procrustes": procrustes_measure,
    "shape": shape_measure,
    "rsa": rsa_measure,
    "mutual-knn": mutual_knn_measure,
    "cknna": cknna_measure,
    "relative": relative_measure,
}

DEFAULT_MEASURE = "cka"


def measure_names() -> str:
    """The accepted names, comma-separated (for help texts and errors)."""
    return ", ".join(MEASURES)


def _value(text: str) -> object:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def measure_from_spec(spec: str) -> Measure:
    """The measure ``spec`` names: ``cka``, ``shape:alpha=0.5``, ... (options are the factory's keywords)."""
    name, _, rest = spec.strip().partition(":")
    if name not in MEASURES:
        raise CompareError(f"unknown measure {name!r}; accepted: {measure_names()}")
    factory = MEASURES[name]
    options: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, equals, value = item.partition("=")
        if not equals:
            raise CompareError(f"measure option {item!r} must read key=value, as in shape:alpha=0.5")
        options[key.strip().replace("-", "_")] = _value(value.strip())
    accepted = [p for p in inspect.signature(factory).parameters if p not in getattr(factory, "keywords", {})]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise CompareError(
            f"measure {name!r} has no option {unknown[0]!r}; accepted: {', '.join(accepted) or 'none'}"
        )
    try:
        return factory(**options)
    except TypeError as error:
        raise CompareError(f"bad options for measure {name!r}: {error}") from None
