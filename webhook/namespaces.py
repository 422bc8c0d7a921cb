"""Where the webhook learns a Namespace's labels, annotations and cache claims (admin-owned).

`NamespaceSource.lookup` is awaited on the admission path and must answer from memory;
`StaticNamespaces` serves fixed data (no cluster, `preview`, tests), `WatchedNamespaces` keeps
every Namespace and PersistentVolumeClaim in memory with the `kubernetes` client's list + watch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Generic, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

logger = logging.getLogger(__name__)

FALLBACK_WARNING: Final = (
    "namespace {name!r}: {why}: namespace policy unavailable, using the cluster config"
)
_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})

V = TypeVar("V")


@dataclass(frozen=True)
class ClaimInfo:
    """What the webhook needs to know of one PersistentVolumeClaim."""

    access_modes: tuple[str, ...] = ()
    phase: str = ""


@dataclass(frozen=True)
class NamespaceView:
    """What is known of one Namespace. `annotations is None`: unknown (no cluster, not found).

    `claims`: the PersistentVolumeClaims of the namespace by name, or None when unknown (then
    the webhook cannot check that the cache claim exists and injects anyway).
    """

    name: str
    annotations: Mapping[str, str] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    warning: str | None = None
    claims: Mapping[str, ClaimInfo] | None = None


class NamespaceSource(Protocol):
    async def lookup(self, name: str) -> NamespaceView: ...

    @property
    def synced(self) -> bool: ...


class StaticNamespaces:
    """Fixed namespace annotations, keyed by namespace name; `None` key applies to any."""

    def __init__(self, annotations: Mapping[str | None, Mapping[str, str]] | None = None) -> None:
        self._annotations = dict(annotations or {})

    async def lookup(self, name: str) -> NamespaceView:
        return self.get(name)

    def get(self, name: str) -> NamespaceView:
        found = self._annotations.get(name, self._annotations.get(None))
        return NamespaceView(name=name, annotations=dict(found) if found is not None else None)

    @property
    def synced(self) -> bool:
        return True

    def start(self) -> None:
        """Nothing to start; present so `serve` treats every source alike."""

    def stop(self) -> None:
        """Nothing to stop."""


@dataclass(frozen=True)
class _Entry:
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    resource_version: str


# A parsed object: (namespace, name, value); namespace "" for cluster-scoped kinds. A value of
# None means "as good as absent" (a claim being deleted), so an event with it removes the key.
Parsed = tuple[str, str, V | None]


def _entry(obj: Mapping[str, Any]) -> Parsed[_Entry] | None:
    """Key and entry of a raw Namespace object; None for a shape we cannot use."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
        return None

    def strings(value: object) -> Mapping[str, str]:
        if not isinstance(value, Mapping):
            return _EMPTY
        return MappingProxyType({str(k): str(v) for k, v in value.items()})

    return (
        "",
        meta["name"],
        _Entry(
            labels=strings(meta.get("labels")),
            annotations=strings(meta.get("annotations")),
            resource_version=str(meta.get("resourceVersion") or ""),
        ),
    )


def _claim(obj: Mapping[str, Any]) -> Parsed[ClaimInfo] | None:
    """Key and access modes / phase of a raw PersistentVolumeClaim; None for a bad shape."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    name, namespace = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not isinstance(namespace, str):
        return None
    if meta.get("deletionTimestamp"):
        # being deleted: the scheduler refuses new pods that use it, so it counts as missing
        return namespace, name, None
    spec, status = obj.get("spec"), obj.get("status")
    modes = spec.get("accessModes") if isinstance(spec, Mapping) else None
    phase = status.get("phase") if isinstance(status, Mapping) else None
    return (
        namespace,
        name,
        ClaimInfo(
            access_modes=tuple(str(m) for m in modes) if isinstance(modes, list) else (),
            phase=phase if isinstance(phase, str) else "",
        ),
    )


class NamespaceMetrics:
    """The watchers' Prometheus metrics, on a registry the caller owns."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.cached = Gauge(
            "kserve_cache_namespaces_cached",
            "Namespaces held in the webhook's in-memory namespace cache.",
            registry=registry,
        )
        self.synced = Gauge(
            "kserve_cache_namespaces_synced",
            "1 once the namespace cache has listed the Namespaces, else 0.",
            registry=registry,
        )
        self.watch_restarts = Counter(
            "kserve_cache_namespace_watch_restarts",
            "Namespace list+watch restarts, by reason (gone: 410 re-list; error: reconnect; "
            "forbidden: 403).",
            ["reason"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "kserve_cache_namespace_fallbacks",
            "Admissions answered from the cluster config because the namespace was unknown "
            "and the API server could not tell, by reason.",
            ["reason"],
            registry=registry,
        )
        self.claims_cached = Gauge(
            "kserve_cache_claims_cached",
            "PersistentVolumeClaims held in the webhook's in-memory claim cache.",
            registry=registry,
        )
        self.claims_synced = Gauge(
            "kserve_cache_claims_synced",
            "1 while the cache claim check is on (claims listed, list/watch working), else 0.",
            registry=registry,
        )
        self.claim_watch_restarts = Counter(
            "kserve_cache_claim_watch_restarts",
            "PersistentVolumeClaim list+watch restarts, by reason (gone: 410 re-list; "
            "error: reconnect; forbidden: 403, the ClusterRole lacks persistentvolumeclaims).",
            ["reason"],
            registry=registry,
        )


@dataclass(frozen=True)
class _Timing:
    watch_timeout: int
    request_timeout: tuple[float, float]  # (connect, read)
    backoff_initial: float
    backoff_max: float


class _Reflector(Generic[V]):
    """One kind of object kept in memory by list + watch in a background thread.

    The `kubernetes` client is synchronous, hence the thread. A 410 Gone lists again; any other
    failure reconnects with exponential backoff and jitter, then lists again. A 403 is warned
    about once per streak (RBAC not granted) and retried with the same backoff, so granting
    the permission later turns the cache on without a restart.
    """

    def __init__(
        self,
        *,
        noun: str,
        plural: str,
        list_call: Callable[..., Any],
        parse: Callable[[Mapping[str, Any]], Parsed[V] | None],
        cached: Gauge,
        synced: Gauge,
        restarts: Counter,
        stopping: threading.Event,
        timing: _Timing,
        forbidden_effect: str,
        synced_while_healthy: bool = False,
    ) -> None:
        self._noun = noun
        self._plural = plural
        self._list_call = list_call
        self._parse = parse
        self._cached = cached
        self._synced_gauge = synced
        self._restarts = restarts
        self._stopping = stopping
        self._timing = timing
        self._forbidden_effect = forbidden_effect
        # the `synced` gauge: 1 from the first list on, or (True) only while list/watch works
        self._synced_while_healthy = synced_while_healthy
        self._lock = threading.Lock()
        self._items: dict[str, dict[str, V]] = {}  # namespace ("" if none) -> name -> value
        self._count = 0
        self._synced = False
        self._healthy = True  # as last seen by the thread: the last list/watch worked
        self._forbidden = False
        self._thread: threading.Thread | None = None
        self._watch: Any = None
        self._random = random.Random()  # noqa: S311 - jitter, not cryptography

    # lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"{self._noun}-watch", daemon=True
            )
            self._thread.start()

    def join(self, deadline: float) -> None:
        """Wait for the thread until `deadline` (monotonic); the caller set `stopping`."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        while thread.is_alive() and time.monotonic() < deadline:
            # Again and again: a watch whose request was still being sent has no socket to
            # shut down yet. Watch.stop shuts it down, so a blocked read returns.
            watch = self._watch
            if watch is not None:
                watch.stop()
            thread.join(0.05)
        if thread.is_alive():
            logger.warning("%s watch thread did not stop in time", self._noun)

    # state ---------------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        """A full list has been held in memory since the first success."""
        return self._synced

    @property
    def healthy(self) -> bool:
        """False while list/watch keeps failing (server unreachable, 403 ...)."""
        return self._healthy

    @property
    def forbidden(self) -> bool:
        return self._forbidden

    def get(self, namespace: str, name: str) -> V | None:
        with self._lock:
            return self._items.get(namespace, {}).get(name)

    def group(self, namespace: str) -> Mapping[str, V]:
        """A snapshot of one namespace's objects (the thread goes on changing the original)."""
        with self._lock:
            return MappingProxyType(dict(self._items.get(namespace, {})))

    def keep(self, namespace: str, name: str, value: V) -> V:
        """Store `value` unless an entry is there already (the watch's copy wins); the entry."""
        with self._lock:
            current = self._items.setdefault(namespace, {}).setdefault(name, value)
            self._recount()
            return current

    def _recount(self) -> None:
        self._count = sum(len(group) for group in self._items.values())
        self._cached.set(self._count)

    # the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        failures = 0
        version: str | None = None
        while not self._stopping.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch_from(version)
                failures = 0
            except ApiException as exc:
                if self._stopping.is_set():
                    break
                version = None
                if exc.status == 410:
                    # the history we asked for is gone: list again, at once the first time
                    logger.info("%s watch expired (410 Gone): listing again", self._noun)
                    self._restarts.labels(reason="gone").inc()
                    if failures:
                        self._pause(failures)
                    failures += 1
                    continue
                if exc.status == 403:
                    self._refused(exc, failures)
                else:
                    self._failed(exc, failures)
                failures += 1
            except Exception as exc:  # connection refused, reset, timeout, bad data ...
                if self._stopping.is_set():
                    break
                version = None
                self._failed(exc, failures)
                failures += 1

    def _unhealthy(self) -> None:
        self._healthy = False
        if self._synced_while_healthy:
            self._synced_gauge.set(0)

    def _failed(self, exc: BaseException, failures: int) -> None:
        self._unhealthy()
        self._restarts.labels(reason="error").inc()
        delay = self._pause(failures)
        logger.warning(
            "%s list/watch failed (%s: %s); retrying in %.2fs",
            self._noun,
            type(exc).__name__,
            exc,
            delay,
        )

    def _refused(self, exc: Any, failures: int) -> None:
        self._unhealthy()
        self._restarts.labels(reason="forbidden").inc()
        if not self._forbidden:
            self._forbidden = True
            # once: the answer will not change until an admin grants the permission
            logger.warning(
                "%s list/watch forbidden (403 %s): %s",
                self._noun,
                str(getattr(exc, "reason", "") or "").strip(),
                self._forbidden_effect,
            )
        self._pause(failures)

    def _pause(self, failures: int) -> float:
        """Sleep an exponential backoff with jitter (50-100 %), or until stopped."""
        timing = self._timing
        ceiling = min(timing.backoff_max, timing.backoff_initial * 2.0 ** min(failures, 30))
        delay = ceiling * (0.5 + self._random.random() / 2)
        self._stopping.wait(delay)
        return delay

    def _ok(self) -> None:
        self._healthy = True
        if self._synced:
            self._synced_gauge.set(1)
        if self._forbidden:
            self._forbidden = False
            logger.info("%s list/watch allowed again", self._noun)

    def _list(self) -> str:
        response = self._list_call(
            _preload_content=False, _request_timeout=self._timing.request_timeout
        )
        try:
            body = _json(response.data)
        finally:
            response.release_conn()
        items = body.get("items")
        meta = body.get("metadata")
        if not isinstance(items, list) or not isinstance(meta, Mapping):
            raise ValueError(f"{self._noun} list: unexpected shape")
        version = str(meta.get("resourceVersion") or "")
        fresh: dict[str, dict[str, V]] = {}
        for item in items:
            parsed = self._parse(item) if isinstance(item, Mapping) else None
            if parsed is not None and parsed[2] is not None:
                fresh.setdefault(parsed[0], {})[parsed[1]] = parsed[2]
        with self._lock:
            # replaced whole: objects deleted while we were away disappear too
            self._items = fresh
            self._recount()
            count = self._count
        self._ok()
        if not self._synced:
            logger.info("%s cache synced: %d %s", self._noun, count, self._plural)
        self._synced = True
        self._synced_gauge.set(1)
        return version

    def _watch_from(self, version: str) -> str:
        """Apply watch events from `version` until the server ends the stream; the new version."""
        from kubernetes import watch

        timing = self._timing
        self._watch = w = watch.Watch()
        try:
            if self._stopping.is_set():
                return version
            stream = w.stream(
                self._list_call,
                resource_version=version,
                timeout_seconds=timing.watch_timeout,
                allow_watch_bookmarks=True,
                _request_timeout=(timing.request_timeout[0], timing.watch_timeout + 10),
            )
            for event in stream:
                version = self._apply(event, version)
            self._ok()
            return version
        finally:
            self._watch = None

    def _apply(self, event: Mapping[str, Any], version: str) -> str:
        kind = event.get("type")
        raw = event.get("raw_object")
        if not isinstance(raw, Mapping):
            return version
        meta = raw.get("metadata")
        if isinstance(meta, Mapping) and meta.get("resourceVersion"):
            version = str(meta["resourceVersion"])
        if kind == "BOOKMARK":
            return version
        parsed = self._parse(raw)
        if parsed is None:
            return version
        namespace, name, value = parsed
        with self._lock:
            if kind == "DELETED" or (kind in ("ADDED", "MODIFIED") and value is None):
                group = self._items.get(namespace)
                if group is not None:
                    group.pop(name, None)
                    if not group:
                        del self._items[namespace]
            elif kind in ("ADDED", "MODIFIED") and value is not None:
                self._items.setdefault(namespace, {})[name] = value
            self._recount()
        logger.debug("%s %s/%s %s at %s", self._noun, namespace, name, kind, version)
        return version


class WatchedNamespaces:
    """Every Namespace's labels and annotations, and every PersistentVolumeClaim's access
    modes and phase, kept fresh by list + watch in two background threads.

    `start()` begins listing; `synced` turns true after the first list of Namespaces (the
    claims do not hold it back). `lookup` answers from memory; a namespace not seen yet costs
    one GET bounded by `lookup_timeout`, and when the API server cannot answer the view
    carries no annotations and a warning, so admission goes on with the cluster config. A
    namespace seen before keeps its last known annotations while the server is down.

    A view's `claims` are the namespace's claims while the claim watch is synced and working,
    else None ("unknown": the webhook then injects without checking). `watch_claims=False`
    turns the claim watch off.
    """

    def __init__(
        self,
        configuration: Any,
        *,
        registry: CollectorRegistry | None = None,
        watch_claims: bool = True,
        watch_timeout: int = 300,
        request_timeout: float = 10.0,
        connect_timeout: float = 3.0,
        lookup_timeout: float = 1.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        from kubernetes import client

        self._api = client.ApiClient(configuration)
        self._core = client.CoreV1Api(self._api)
        self.metrics = NamespaceMetrics(registry or CollectorRegistry())
        self._request_timeout = (connect_timeout, request_timeout)
        self._lookup_timeout = lookup_timeout
        self._stopping = threading.Event()
        timing = _Timing(
            watch_timeout=max(1, int(watch_timeout)),
            request_timeout=self._request_timeout,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
        )
        self._namespaces: _Reflector[_Entry] = _Reflector(
            noun="namespace",
            plural="namespaces",
            list_call=self._core.list_namespace,
            parse=_entry,
            cached=self.metrics.cached,
            synced=self.metrics.synced,
            restarts=self.metrics.watch_restarts,
            stopping=self._stopping,
            timing=timing,
            forbidden_effect="namespace policy unavailable until the webhook's ClusterRole "
            "grants get, list, watch on namespaces",
        )
        self._claims: _Reflector[ClaimInfo] | None = None
        if watch_claims:
            self._claims = _Reflector(
                noun="claim",
                plural="claims",
                list_call=self._core.list_persistent_volume_claim_for_all_namespaces,
                parse=_claim,
                cached=self.metrics.claims_cached,
                synced=self.metrics.claims_synced,
                restarts=self.metrics.claim_watch_restarts,
                stopping=self._stopping,
                timing=timing,
                forbidden_effect="cache claim check off (pods are injected without checking "
                "that the claim exists) until the webhook's ClusterRole grants get, list, "
                "watch on persistentvolumeclaims",
                synced_while_healthy=True,
            )
        self._lock = threading.Lock()
        self._started = False
        self._inflight: dict[str, concurrent.futures.Future[_Entry | None]] = {}
        self._getters = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="namespace-get"
        )

    def _reflectors(self) -> list[_Reflector[Any]]:
        return [r for r in (self._namespaces, self._claims) if r is not None]

    # lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._stopping.clear()
        for reflector in self._reflectors():
            reflector.start()

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop the watches, wait for the threads, close the client's connections."""
        self._stopping.set()
        self._started = False
        deadline = time.monotonic() + timeout
        for reflector in self._reflectors():
            reflector.join(deadline)
        self._getters.shutdown(wait=True, cancel_futures=True)
        self._api.close()

    # state ---------------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        return self._namespaces.synced

    @property
    def reachable(self) -> bool:
        """False while the namespace watch cannot reach the API server."""
        return self._namespaces.healthy

    @property
    def claims_known(self) -> bool:
        """True while views carry the namespaces' claims (the claim check is on)."""
        claims = self._claims
        return claims is not None and claims.synced and claims.healthy

    def names(self) -> list[str]:
        return sorted(self._namespaces.group(""))

    def claims_of(self, namespace: str) -> Mapping[str, ClaimInfo] | None:
        """The claims of `namespace` by name, or None while they are not known."""
        if self._claims is None or not self.claims_known:
            return None
        return self._claims.group(namespace)

    def get(self, name: str) -> NamespaceView | None:
        """The view of a namespace held in memory, or None; never calls the API server."""
        entry = self._namespaces.get("", name)
        if entry is None:
            return None
        return self._view(name, entry)

    def _view(self, name: str, entry: _Entry | None) -> NamespaceView:
        return NamespaceView(
            name=name,
            annotations=entry.annotations if entry is not None else None,
            labels=entry.labels if entry is not None else {},
            claims=self.claims_of(name),
        )

    async def lookup(self, name: str) -> NamespaceView:
        view = self.get(name)
        if view is not None:
            return view
        if self._stopping.is_set():
            return self._fallback(name, "the namespace cache is stopped", reason="stopped")
        if not self.reachable:
            if self._namespaces.forbidden:
                why = "the webhook may not read Namespaces (403 Forbidden)"
                return self._fallback(name, why, "forbidden")
            return self._fallback(name, "the Kubernetes API server is unreachable", "unreachable")
        try:
            future = self._get_once(name)
            # shield: a timed-out admission must not cancel the GET others share
            entry = await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(future)), self._lookup_timeout
            )
        except TimeoutError:
            return self._fallback(name, "the Kubernetes API server did not answer", "timeout")
        except Exception as exc:  # the GET failed: any error means "cannot tell"
            logger.warning("namespace %s: GET failed: %s", name, exc)
            return self._fallback(name, "the Kubernetes API server could not answer", "error")
        return self._view(name, entry)

    def _fallback(self, name: str, why: str, reason: str) -> NamespaceView:
        self.metrics.fallbacks.labels(reason=reason).inc()
        return NamespaceView(
            name=name,
            annotations=None,
            warning=FALLBACK_WARNING.format(name=name, why=why),
            claims=self.claims_of(name),
        )

    # the one GET for a namespace not seen yet ----------------------------------------------

    def _get_once(self, name: str) -> concurrent.futures.Future[_Entry | None]:
        with self._lock:
            future = self._inflight.get(name)
            if future is not None:
                return future
            future = self._getters.submit(self._read, name)
            self._inflight[name] = future
        # Outside the lock: a GET that already finished runs the callback right here, and
        # `_forget` takes the lock (holding it here deadlocked the admission).
        future.add_done_callback(lambda done: self._forget(name, done))
        return future

    def _forget(self, name: str, future: concurrent.futures.Future[_Entry | None]) -> None:
        with self._lock:
            if self._inflight.get(name) is future:
                del self._inflight[name]

    def _get_json(self, call: Callable[..., Any], *args: str) -> dict[str, Any] | None:
        """One bounded GET of an object; None when the API server says it does not exist."""
        from kubernetes.client.exceptions import ApiException

        try:
            response = call(
                *args,
                _preload_content=False,
                # a slow GET only keeps a worker busy: the admission stopped waiting already
                _request_timeout=(
                    min(self._request_timeout[0], self._lookup_timeout * 2),
                    self._lookup_timeout * 2,
                ),
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        try:
            return _json(response.data)
        finally:
            response.release_conn()

    def _read(self, name: str) -> _Entry | None:
        obj = self._get_json(self._core.read_namespace, name)
        parsed = _entry(obj) if obj is not None else None
        if parsed is None:
            return None
        _, found_name, entry = parsed
        if entry is None:
            return None
        return self._namespaces.keep("", found_name, entry)

    # one GET for a cache claim the watch has not delivered yet ----------------------------

    async def confirm_claim(self, namespace: str, name: str) -> bool | None:
        """Whether claim `name` exists in `namespace`, asked of the API server once.

        For a claim created a moment before its pod: the watch may not have delivered it, and
        `pvc-missing` must never come from a stale list. True: it exists (and is kept in
        memory); False: the API server says it does not; None: cannot tell in time.
        """
        if self._claims is None or self._stopping.is_set():
            return None
        future = self._getters.submit(self._read_claim, namespace, name)
        try:
            return await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(future)), self._lookup_timeout
            )
        except TimeoutError:
            self.metrics.fallbacks.labels(reason="timeout").inc()
            return None
        except Exception as exc:  # any error means "cannot tell"
            logger.warning("claim %s/%s: GET failed: %s", namespace, name, exc)
            return None

    def _read_claim(self, namespace: str, name: str) -> bool:
        assert self._claims is not None  # noqa: S101 - checked by the caller
        obj = self._get_json(self._core.read_namespaced_persistent_volume_claim, name, namespace)
        parsed = _claim(obj) if obj is not None else None
        if parsed is None:
            return False
        found_namespace, found_name, info = parsed
        if info is None:  # being deleted
            return False
        self._claims.keep(found_namespace, found_name, info)
        return True


def _json(data: bytes) -> dict[str, Any]:
    parsed = json.loads(data)
    if not isinstance(parsed, dict):
        raise ValueError("expected a JSON object from the API server")
    return parsed


def namespace_source_from_environment(
    *,
    registry: CollectorRegistry,
    kubeconfig: str | None = None,
    in_cluster: bool | None = None,
    watch_claims: bool = True,
    **options: Any,
) -> WatchedNamespaces | StaticNamespaces:
    """The namespace source `serve` should use; not started yet.

    `in_cluster=None` means: in-cluster when the pod's service-account environment is there
    (`KUBERNETES_SERVICE_HOST`) and no kubeconfig was given. No cluster at all: a
    `StaticNamespaces` that knows nothing (namespace policy and the claim check off), said so
    in the log. `watch_claims=False` turns the cache claim check off. `options` go to
    `WatchedNamespaces` (timeouts, backoff).
    """
    if in_cluster is None:
        in_cluster = kubeconfig is None and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    if not in_cluster and kubeconfig is None:
        logger.warning("no cluster: namespace policy off (Namespace annotations are not read)")
        return StaticNamespaces()

    from kubernetes import client, config

    configuration = client.Configuration()
    if in_cluster:
        config.load_incluster_config(client_configuration=configuration)
        where = "in-cluster service account"
    else:
        kubeconfig = str(Path(kubeconfig or "").expanduser())
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        where = f"kubeconfig {kubeconfig}"
    logger.info("namespace policy on: watching Namespaces at %s (%s)", configuration.host, where)
    if watch_claims:
        logger.info("cache claim check on: watching PersistentVolumeClaims")
    else:
        logger.info("cache claim check off: PersistentVolumeClaims are not read")
    return WatchedNamespaces(configuration, registry=registry, watch_claims=watch_claims, **options)
