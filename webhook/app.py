"""The HTTP edge: FastAPI routes for /mutate, health and metrics. The one place where
exceptions become HTTP: a malformed review gets 400, everything else an AdmissionReview.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from webhook.config import ConfigStore
from webhook.namespaces import NamespaceSource, StaticNamespaces
from webhook.review import BadReview, parse_review, review

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY: Final = 3 * 1024 * 1024  # the API server sends at most ~3 MiB objects


@dataclass
class Metrics:
    registry: CollectorRegistry
    admissions: Counter = field(init=False)
    latency: Histogram = field(init=False)
    config_reloads: Counter = field(init=False)
    bad_requests: Counter = field(init=False)

    def __post_init__(self) -> None:
        r = self.registry
        self.admissions = Counter(
            "kserve_cache_admissions",
            "Admission reviews answered, by outcome and skip reason",
            ["outcome", "reason"],
            registry=r,
        )
        self.latency = Histogram(
            "kserve_cache_admission_duration_seconds",
            "Time to answer one admission review (parse, decide, patch, encode)",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.config_reloads = Counter(
            "kserve_cache_config_reloads",
            "Cluster config reloads, by result",
            ["result"],
            registry=r,
        )
        self.bad_requests = Counter(
            "kserve_cache_bad_requests",
            "Requests to /mutate refused with an HTTP error, by reason",
            ["reason"],
            registry=r,
        )


@dataclass
class AppState:
    store: ConfigStore
    namespaces: NamespaceSource
    metrics: Metrics
    max_body: int = DEFAULT_MAX_BODY
    reload_interval: float = 2.0
    shutting_down: bool = False
    extra_ready_checks: list[Any] = field(default_factory=list)


def _refresh_config(state: AppState) -> None:
    result = state.store.refresh()
    if result is not None:
        state.metrics.config_reloads.labels("ok" if result else "error").inc()


async def _watch_config(state: AppState) -> None:
    while True:
        await asyncio.sleep(state.reload_interval)
        try:
            _refresh_config(state)
        except Exception:  # never let the watcher die
            logger.exception("config refresh failed")


def _http_error(state: AppState, status: int, reason: str, message: str) -> JSONResponse:
    state.metrics.bad_requests.labels(reason).inc()
    return JSONResponse({"error": message}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is larger than `limit` (read no further than that)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(raw: bytes) -> Any:
    """orjson for speed; what it refuses (NaN, lone surrogates, nesting deeper than 1024, bad
    UTF-8) goes to the stdlib parser, which accepts or raises exactly as it always did."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw.decode("utf-8"))


FLOOR_RESPONSE: Final = orjson.dumps(
    {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {"allowed": True}}
)


def create_app(
    *,
    store: ConfigStore | None = None,
    namespaces: NamespaceSource | None = None,
    registry: CollectorRegistry | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    reload_interval: float = 2.0,
    floor: bool = False,
) -> FastAPI:
    """The webhook app. `floor=True` adds `POST /floor` for benchmarks: the same HTTP path as
    /mutate (content type check, body read) with nothing parsed: it answers allowed, no patch."""
    state = AppState(
        store=store or ConfigStore(None),
        namespaces=namespaces or StaticNamespaces(),
        metrics=Metrics(registry or CollectorRegistry()),
        max_body=max_body,
        reload_interval=reload_interval,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        watcher = asyncio.create_task(_watch_config(state))
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    app = FastAPI(
        title="kserve-cache",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.kc = state

    @app.post("/mutate")
    async def mutate(request: Request) -> Response:
        started = time.perf_counter()
        content_type = request.headers.get("content-type", "")
        if content_type.split(";", 1)[0].strip().lower() != "application/json":
            return _http_error(
                state, 415, "content-type", f"expected application/json, got {content_type!r}"
            )
        raw = await _read_body(request, state.max_body)
        if raw is None:
            return _http_error(state, 413, "too-large", f"body larger than {state.max_body} bytes")
        try:
            body = _parse_json(raw)
        except UnicodeDecodeError:
            return _http_error(state, 400, "encoding", "body is not UTF-8")
        except RecursionError:
            return _http_error(state, 400, "nesting", "body is nested too deeply")
        except ValueError as exc:
            return _http_error(state, 400, "json", f"body is not JSON: {exc}")
        try:
            admission = parse_review(body)
        except BadReview as exc:
            return _http_error(state, 400, "envelope", f"not an AdmissionReview: {exc}")
        view = await state.namespaces.lookup(admission.namespace)
        result = review(admission, config=state.store.config, namespace=view)
        decision = result.decision
        state.metrics.admissions.labels(
            decision.kind, decision.reason.value if decision.reason else ""
        ).inc()
        if decision.kind in ("mutated", "error") or decision.warnings:
            logger.info(
                "pod %s/%s: %s %s %s",
                admission.namespace,
                admission.object.get("metadata", {}).get("generateName", "")
                if isinstance(admission.object.get("metadata"), dict)
                else "",
                decision.kind,
                decision.reason.value if decision.reason else decision.key or "",
                "; ".join(decision.warnings),
            )
        state.metrics.latency.observe(time.perf_counter() - started)
        return Response(orjson.dumps(result.response), media_type="application/json")

    if floor:

        @app.post("/floor")
        async def floor_endpoint(request: Request) -> Response:
            content_type = request.headers.get("content-type", "")
            if content_type.split(";", 1)[0].strip().lower() != "application/json":
                return _http_error(state, 415, "content-type", "expected application/json")
            if await _read_body(request, state.max_body) is None:
                return _http_error(state, 413, "too-large", "body too large")
            return Response(FLOOR_RESPONSE, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/readyz")
    async def readyz() -> Response:
        problems = []
        if state.shutting_down:
            problems.append("shutting down")
        if not state.namespaces.synced:
            problems.append("namespace cache not synced")
        for check in state.extra_ready_checks:
            problem = check()
            if problem:
                problems.append(problem)
        if problems:
            return PlainTextResponse("not ready: " + "; ".join(problems), status_code=503)
        return PlainTextResponse("ok")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
