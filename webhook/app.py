"""The HTTP edge: FastAPI routes for /mutate, health and metrics. The one place where
exceptions become HTTP: a malformed review gets 400, everything else an AdmissionReview.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.types import Receive, Scope, Send

from webhook.config import ConfigStore
from webhook.memo import DEFAULT_SIZE as MEMO_SIZE
from webhook.memo import ReviewMemo
from webhook.namespaces import NamespaceSource, StaticNamespaces
from webhook.review import AdmissionRequest, BadReview, Decision, parse_review, review
from webhook.skips import SkipReason

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY: Final = 3 * 1024 * 1024  # the API server sends at most ~3 MiB objects


@dataclass
class Metrics:
    registry: CollectorRegistry
    admissions: Counter = field(init=False)
    latency: Histogram = field(init=False)
    config_reloads: Counter = field(init=False)
    bad_requests: Counter = field(init=False)
    _outcomes: dict[tuple[str, str], Any] = field(init=False, default_factory=dict)

    def outcome(self, kind: str, reason: str) -> Any:
        """The admissions counter child for one outcome (`labels()` takes a lock and checks
        the labels on every call: a cost per admission)."""
        child = self._outcomes.get((kind, reason))
        if child is None:
            child = self._outcomes[kind, reason] = self.admissions.labels(kind, reason)
        return child

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
    memo: ReviewMemo = field(default_factory=ReviewMemo)


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


JSON_HEADERS: Final = [(b"content-type", b"application/json")]


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


def _http_error(state: AppState, status: int, reason: str, message: str) -> Answer:
    state.metrics.bad_requests.labels(reason).inc()
    return Answer(status, orjson.dumps({"error": message}))


class _Disconnected(Exception):
    """The client went away before sending the whole body: nothing to answer."""


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The body, or None when it is larger than `limit` (read no further than that)."""
    declared = _header(scope, b"content-length")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


def _parse_json(raw: bytes) -> tuple[Any, bool]:
    """orjson for speed; what it refuses (NaN, lone surrogates, nesting deeper than 1024, bad
    UTF-8) goes to the stdlib parser, which accepts or raises exactly as it always did. The
    flag: parsed by orjson (dumping it again gives the same document, so it can be memoized)."""
    try:
        return orjson.loads(raw), True
    except orjson.JSONDecodeError:
        return json.loads(raw.decode("utf-8")), False


FLOOR_RESPONSE: Final = orjson.dumps(
    {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {"allowed": True}}
)


def _is_json(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


async def _admit(state: AppState, scope: Scope, receive: Receive) -> Answer:
    """POST /mutate: one AdmissionReview in, one out; malformed requests get a JSON error."""
    started = time.perf_counter()
    content_type = _header(scope, b"content-type")
    if not _is_json(content_type):
        return _http_error(
            state, 415, "content-type", f"expected application/json, got {content_type!r}"
        )
    raw = await _read_body(scope, receive, state.max_body)
    if raw is None:
        return _http_error(state, 413, "too-large", f"body larger than {state.max_body} bytes")
    try:
        body, exact = _parse_json(raw)
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
    # A pod request always names its namespace; one that does not gets no namespace's view.
    view = await state.namespaces.lookup(admission.namespace) if admission.namespace else None
    config = state.store.config
    # Pods of one ReplicaSet arrive identical: all but the first are answered from the memo.
    key = state.memo.key(admission, view=view, config=config) if exact else None
    remembered = state.memo.get(key, admission) if key is not None else None
    if remembered is not None:
        response, decision = remembered
        return _answered(state, admission, decision, response, started)
    result = review(admission, config=config, namespace=view)
    decision = result.decision
    if key is not None:
        state.memo.put(key, result)
    confirm = getattr(state.namespaces, "confirm_claim", None)
    if (
        decision.reason is SkipReason.PVC_MISSING
        and decision.policy
        and confirm is not None
        and admission.namespace
    ):
        # The list says the claim is missing; a claim created a moment ago may not have
        # arrived yet: ask once (bounded) before admitting the pod without the cache.
        exists = await confirm(admission.namespace, decision.policy.pvc)
        if exists is not False:
            view = await state.namespaces.lookup(admission.namespace)
            if exists is None:  # cannot tell: inject, as when the claims are unknown
                view = dataclasses.replace(view, claims=None)
            result = review(admission, config=state.store.config, namespace=view)
            decision = result.decision
    return _answered(state, admission, decision, result.response, started)


def _answered(
    state: AppState,
    admission: AdmissionRequest,
    decision: Decision,
    response: dict[str, Any],
    started: float,
) -> Answer:
    """Count, log when something needs reading, encode."""
    state.metrics.outcome(decision.kind, decision.reason.value if decision.reason else "").inc()
    # One line per pod only when something needs reading; outcomes are in the metrics and,
    # per pod, in the API server's audit annotations and the pod's status annotation.
    level = logging.INFO if decision.kind == "error" or decision.warnings else logging.DEBUG
    if logger.isEnabledFor(level):
        meta = admission.object.get("metadata")
        logger.log(
            level,
            "pod %s/%s: %s %s %s",
            admission.namespace,
            meta.get("generateName", "") if isinstance(meta, dict) else "",
            decision.kind,
            decision.reason.value if decision.reason else decision.key or "",
            "; ".join(decision.warnings),
        )
    state.metrics.latency.observe(time.perf_counter() - started)
    return Answer(200, orjson.dumps(response))


async def _floor(state: AppState, scope: Scope, receive: Receive) -> Answer:
    """POST /floor: the HTTP part of /mutate (content type, body read), nothing parsed."""
    if not _is_json(_header(scope, b"content-type")):
        return _http_error(state, 415, "content-type", "expected application/json")
    if await _read_body(scope, receive, state.max_body) is None:
        return _http_error(state, 413, "too-large", "body too large")
    return Answer(200, FLOOR_RESPONSE)


class WebhookApp:
    """The ASGI app: POST /mutate (and /floor when enabled) are answered straight from the ASGI
    messages; health, readiness, metrics and lifespan go to FastAPI. FastAPI's middleware,
    routing and dependency solving cost as much CPU as a whole floor request, so the admission
    path, run for every pod, does without them."""

    def __init__(self, api: FastAPI, state: AppState, *, floor: bool) -> None:
        self.api = api
        self.state = api.state  # `app.state.kc` is the AppState, as on the FastAPI app
        self._kc = state
        self._routes = {"/mutate": _admit, **({"/floor": _floor} if floor else {})}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self._routes.get(scope["path"]) if scope["type"] == "http" else None
        if handler is None:
            await self.api(scope, receive, send)
            return
        if scope["method"] != "POST":
            answer = Answer(405, orjson.dumps({"error": "use POST"}))
        else:
            try:
                answer = await handler(self._kc, scope, receive)
            except _Disconnected:
                return
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [*JSON_HEADERS, (b"content-length", b"%d" % len(answer.body))],
            }
        )
        await send({"type": "http.response.body", "body": answer.body})


def create_app(
    *,
    store: ConfigStore | None = None,
    namespaces: NamespaceSource | None = None,
    registry: CollectorRegistry | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    reload_interval: float = 2.0,
    floor: bool = False,
    memo_size: int = MEMO_SIZE,
) -> WebhookApp:
    """The webhook app. `floor=True` adds `POST /floor` for benchmarks: the same HTTP path as
    /mutate (content type check, body read) with nothing parsed: it answers allowed, no patch."""
    state = AppState(
        store=store or ConfigStore(None),
        namespaces=namespaces or StaticNamespaces(),
        metrics=Metrics(registry or CollectorRegistry()),
        max_body=max_body,
        reload_interval=reload_interval,
        memo=ReviewMemo(memo_size),
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

    return WebhookApp(app, state, floor=floor)
