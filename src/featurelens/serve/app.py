"""The web app: a typed JSON API over one atlas, and the pages built on it (all assets from the package).

Routes (the OpenAPI schema is at ``/openapi.json``):

    GET  /                          the single-page app (overview, #/feature/ID, #/try, #/steer, #/circuit,
                                    #/neurons, #/probe, #/compare)
    GET  /static/...                its script and style sheet, served from the package only
    GET  /api/meta                  model, hook, dictionary, evaluation, settings
    GET  /api/densities             histogram of log10 feature densities, and the dead count
    GET  /api/features              one page of features: ?sort=recommended&order=desc&limit=50&offset=0
    GET  /api/features/{id}         everything about one feature
    GET  /api/search?q=...          features whose top / output tokens (or explanations) match
    GET  /api/circuit               the circuit being shown (``--circuit``), nodes linked to atlas pages
    GET  /api/neurons               the neuron report being shown (``--neurons``), units linked to atlas pages
    GET  /api/probe                 the probe results being shown (``--probe``), units linked to atlas pages
    GET  /api/compare               the layer x layer maps being shown (``--compare``): values, p-values, null
    GET  /api/compare/png/{name}    one of their heatmap PNGs, by name (``{map}_{measure}.png``) only
    GET  /api/model                 state of the live model: idle, loading, ready, failed
    POST /api/activations           {"text"} -> each token's strongest features (loads the model lazily)
    POST /api/steer                 {"prompt", "features": [{"id", "strength"}], "mode", "max_new_tokens"}

Bad input gets a 4xx with a one-line ``detail``: unknown or non-numeric ids, text over
:data:`MAX_TEXT_CHARS`, strengths beyond :data:`MAX_STRENGTH`, token counts beyond :data:`MAX_NEW_TOKENS`,
and requests made while another one loads the model (429 with Retry-After).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from featurelens.atlas import Atlas, Feature, FeatureSummary
from featurelens.errors import FeatureLensError
from featurelens.intervene.discover import read_circuit
from featurelens.neurons import load_report
from featurelens.serve.circuit import CircuitView, circuit_view
from featurelens.serve.compare import CompareView, compare_png, compare_view
from featurelens.serve.live import LiveModel, ModelBusy, Steering, TokenFeatures
from featurelens.serve.neurons import NeuronView, neuron_view
from featurelens.serve.probe import ProbeViews, probe_views

MAX_TEXT_CHARS = 2000
MAX_NEW_TOKENS = 64
MAX_STRENGTH = 1000.0
MAX_STEERED_FEATURES = 8
ViewT = TypeVar("ViewT")
STATIC = Path(str(resources.files("featurelens.serve") / "static"))


class Meta(BaseModel):
    kind: str
    model: str
    hook_in: str
    hook_out: str
    arch: str
    d_latent: int
    tokens: int
    source: str
    evaluation: dict[str, Any] | None
    output_effects: str
    settings: dict[str, Any]
    live_model: str
    circuit: bool  # whether /api/circuit has a circuit to show
    neurons: bool  # whether /api/neurons has a neuron report to show
    probe: bool  # whether /api/probe has probe results to show
    compare: bool  # whether /api/compare has layer x layer maps to show


class Densities(BaseModel):
    """Counts of features per bin of log10(density); ``dead`` never fired."""

    edges: list[float]
    counts: list[int]
    dead: int


class FeaturePage(BaseModel):
    total: int
    sort: str
    order: str
    items: list[FeatureSummary]
    rule: str = ""  # for sort=recommended: what it puts first on this atlas (Atlas.recommended_rule)


class SearchHit(BaseModel):
    id: int
    density: float
    top_tokens: list[str]
    output_tokens: list[str]


class SearchResults(BaseModel):
    query: str
    results: list[SearchHit]


class ModelState(BaseModel):
    state: Literal["idle", "loading", "ready", "failed"]
    model: str
    detail: str


class ErrorReply(BaseModel):
    """Every 4xx reply: one line saying what was wrong and what is accepted."""

    detail: str


class StrictBody(BaseModel):
    """Request bodies take JSON types as they are: no ``false`` for a number, no ``"3"`` for an id."""

    model_config = ConfigDict(strict=True, extra="forbid")


def _json_integer(value: Any) -> Any:
    """JSON Schema's integer: ``3`` and ``3.0``, never ``true`` or ``"3"``."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WHOLE = BeforeValidator(_json_integer)


class TextRequest(StrictBody):
    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
    top_n: Annotated[int, Field(ge=1, le=20), WHOLE] = 5


class Activations(BaseModel):
    tokens: list[TokenFeatures]


class FeatureStrength(StrictBody):
    id: Annotated[int, Field(ge=0), WHOLE]
    strength: Annotated[float, Field(ge=-MAX_STRENGTH, le=MAX_STRENGTH, allow_inf_nan=False)]


class SteerRequest(StrictBody):
    prompt: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
    features: Annotated[list[FeatureStrength], Field(max_length=MAX_STEERED_FEATURES)]
    mode: Literal["add", "clamp"] = "add"
    max_new_tokens: Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS), WHOLE] = 24


ERRORS = {
    400: "a request the atlas or model cannot serve (e.g. a body that is not JSON)",
    404: "no such feature, circuit, neuron report, probe result or comparison",
    422: "a parameter or body field of the wrong type or out of range",
    429: "the model is loading; retry after the Retry-After seconds",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the 4xx ``codes`` a route can answer, all with :class:`ErrorReply`."""
    return {code: {"model": ErrorReply, "description": ERRORS[code]} for code in codes}


def one_line(error: RequestValidationError) -> str:
    """``body.features.0.strength: Input should be a valid number`` (the first problem, and a count)."""
    problems = error.errors()
    first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(part) for part in first.get("loc", ()))
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}" if where else f"{first.get('msg')}{more}"


@dataclass
class _Served:
    atlas: Atlas
    live: LiveModel
    lock: threading.Lock


def served_or_404(view: ViewT | None, what: str, flag: str) -> ViewT:
    """The optional view given at start-up, or a 404 saying how to serve one."""
    if view is None:
        raise HTTPException(404, f"no {what} is served; start with featurelens serve ATLAS {flag} FOLDER")
    return view


def create_app(
    atlas_path: str | Path,
    *,
    model: str | None = None,
    device: str | None = None,
    circuit: str | Path | None = None,
    neurons: str | Path | None = None,
    probes: Sequence[str | Path] = (),
    compare: str | Path | None = None,
) -> FastAPI:
    """The app serving ``atlas_path`` (and the circuit file ``circuit``, the neuron report folder
    ``neurons``, the probe result folders ``probes`` and the comparison folder ``compare``, if given);
    ``model`` overrides the model named in the atlas."""
    atlas = Atlas.open(atlas_path)
    graph = circuit_view(read_circuit(circuit), atlas.meta) if circuit is not None else None
    report = neuron_view(load_report(neurons), atlas.meta) if neurons is not None else None
    probed = probe_views(probes, atlas.meta) if probes else None
    compared = compare_view(compare) if compare is not None else None
    served = _Served(atlas, LiveModel(atlas.meta, model=model, device=device), threading.Lock())
    app = FastAPI(
        title="featurelens",
        summary=f"the atlas {Path(atlas_path).name}",
        docs_url=None,  # Swagger UI and ReDoc pull their scripts from a CDN; the schema is at /openapi.json
        redoc_url=None,
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(ModelBusy)
    def busy(_request: Request, error: ModelBusy) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=429, headers={"Retry-After": "2"})

    @app.exception_handler(FeatureLensError)
    def refused(_request: Request, error: FeatureLensError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": one_line(error)}, status_code=422)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/meta")
    def meta() -> Meta:
        m = atlas.meta
        return Meta(
            kind=m["kind"],
            model=str(m["model"]),
            hook_in=m["hook_in"],
            hook_out=m["hook_out"],
            arch=m["arch"],
            d_latent=m["d_latent"],
            tokens=m["tokens"],
            source=m["source"],
            evaluation=m.get("evaluation"),
            output_effects=m["output_effects"],
            settings=m["settings"],
            live_model=served.live.model_spec,
            circuit=graph is not None,
            neurons=report is not None,
            probe=probed is not None,
            compare=compared is not None,
        )

    @app.get("/api/densities")
    def densities() -> Densities:
        with served.lock:
            edges, counts, dead = atlas.density_histogram(per_decade=5)
        return Densities(edges=edges, counts=counts, dead=dead)

    @app.get("/api/features", responses=errors(422))
    def features(
        sort: Literal[
            "recommended", "id", "density", "count", "mean_activation", "max_activation", "explanation_score"
        ] = "recommended",
        order: Literal["asc", "desc"] = "desc",
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    ) -> FeaturePage:
        with served.lock:
            items = atlas.features(sort=sort, descending=order == "desc", limit=limit, offset=offset)
            rule = atlas.recommended_rule() if sort == "recommended" else ""
        return FeaturePage(total=len(atlas), sort=sort, order=order, items=items, rule=rule)

    @app.get("/api/features/{feature_id}", responses=errors(404, 422))
    def feature(feature_id: int) -> Feature:
        if not 0 <= feature_id < len(atlas):
            raise HTTPException(404, f"feature {feature_id} is out of range: ids are 0..{len(atlas) - 1}")
        with served.lock:
            return atlas.feature(feature_id)

    @app.get("/api/search", responses=errors(422))
    def search(
        q: Annotated[str, Query(max_length=200)], limit: Annotated[int, Query(ge=1, le=100)] = 20
    ) -> SearchResults:
        with served.lock:
            found = [atlas.feature(i) for i in atlas.search(q, limit=limit)]
        hits = [
            SearchHit(
                id=f.id,
                density=f.density,
                top_tokens=[text for text, _ in f.top_tokens[:8]],
                output_tokens=[t.text for t in f.output_top[:8]],
            )
            for f in found
        ]
        return SearchResults(query=q, results=hits)

    @app.get("/api/circuit", responses=errors(404))
    def circuit_graph() -> CircuitView:
        return served_or_404(graph, "circuit", "--circuit")

    @app.get("/api/neurons", responses=errors(404))
    def neuron_report() -> NeuronView:
        return served_or_404(report, "neuron report", "--neurons")

    @app.get("/api/probe", responses=errors(404))
    def probe_results() -> ProbeViews:
        return served_or_404(probed, "probe result", "--probe")

    @app.get("/api/compare", responses=errors(404))
    def comparison() -> CompareView:
        return served_or_404(compared, "comparison", "--compare")

    @app.get("/api/compare/png/{name}", responses=errors(404), response_class=FileResponse)
    def comparison_png(name: str) -> FileResponse:
        png = compare_png(served_or_404(compared, "comparison", "--compare"), name)
        if png is None or not png.is_file():
            raise HTTPException(
                404, f"no heatmap {name!r} in the comparison; names are {{map}}_{{measure}}.png"
            )
        return FileResponse(png, media_type="image/png")

    @app.get("/api/model")
    def model_state() -> ModelState:
        live = served.live
        return ModelState(state=live.state, model=live.model_spec, detail=live.error)

    @app.post("/api/activations", responses=errors(400, 422, 429))
    def activations(request: TextRequest) -> Activations:
        tokens: list[TokenFeatures] = served.live.activations(request.text, request.top_n)
        return Activations(tokens=tokens)

    @app.post("/api/steer", responses=errors(400, 404, 422, 429))
    def steer(request: SteerRequest) -> Steering:
        strengths: dict[int, float] = {}
        for item in request.features:
            if item.id >= len(atlas):
                raise HTTPException(404, f"feature {item.id} is out of range: ids are 0..{len(atlas) - 1}")
            strengths[item.id] = strengths.get(item.id, 0.0) + item.strength
        return served.live.steer(request.prompt, strengths, request.mode, request.max_new_tokens)

    return app
