"""Where the webhook learns a Namespace's labels and annotations (the admin-owned policy layer).

`NamespaceSource.lookup` is awaited on the admission path and must answer from memory;
`StaticNamespaces` serves fixed data (no cluster, `preview`, tests), `WatchedNamespaces` keeps
every Namespace in memory with the `kubernetes` client's list + watch.
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

logger = logging.getLogger(__name__)

FALLBACK_WARNING: Final = (
    "namespace {name!r}: {why}: namespace policy unavailable, using the cluster config"
)
_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})


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


def _entry(obj: Mapping[str, Any]) -> tuple[str, _Entry] | None:
    """Name and entry of a raw Namespace object; None for a shape we cannot use."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
        return None

    def strings(value: object) -> Mapping[str, str]:
        if not isinstance(value, Mapping):
            return _EMPTY
        return MappingProxyType({str(k): str(v) for k, v in value.items()})

    return meta["name"], _Entry(
        labels=strings(meta.get("labels")),
        annotations=strings(meta.get("annotations")),
        resource_version=str(meta.get("resourceVersion") or ""),
    )


class NamespaceMetrics:
    """The watcher's Prometheus metrics, on a registry the caller owns."""

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
            "Namespace list+watch restarts, by reason (gone: 410 re-list; error: reconnect).",
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


class WatchedNamespaces:
    """Every Namespace's labels and annotations, kept fresh by list + watch in a thread.

    `start()` begins listing in a background thread (the `kubernetes` client is synchronous);
    `synced` turns true after the first list. `lookup` answers from memory; a namespace not
    seen yet costs one GET bounded by `lookup_timeout`, and when the API server cannot answer
    the view carries no annotations and a warning, so admission goes on with the cluster
    config. A namespace seen before keeps its last known annotations while the server is down.
    """

    def __init__(
        self,
        configuration: Any,
        *,
        registry: CollectorRegistry | None = None,
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
        self._watch_timeout = max(1, int(watch_timeout))
        self._request_timeout = (connect_timeout, request_timeout)
        self._lookup_timeout = lookup_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._synced = False
        self._reachable = True  # as last seen by the watch thread
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Any = None
        self._inflight: dict[str, concurrent.futures.Future[_Entry | None]] = {}
        self._getters = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="namespace-get"
        )
        self._random = random.Random()  # noqa: S311 - jitter, not cryptography

    # lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="namespace-watch", daemon=True)
        self._thread.start()

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop the watch, wait for the thread, close the client's connections."""
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            end = time.monotonic() + timeout
            while thread.is_alive() and time.monotonic() < end:
                # Again and again: a watch whose request was still being sent has no socket
                # to shut down yet. Watch.stop shuts it down, so a blocked read returns.
                watch = self._watch
                if watch is not None:
                    watch.stop()
                thread.join(0.05)
            if thread.is_alive():
                logger.warning("namespace watch thread did not stop within %.1fs", timeout)
        self._getters.shutdown(wait=True, cancel_futures=True)
        self._api.close()

    # state ---------------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        return self._synced

    @property
    def reachable(self) -> bool:
        """False while the watch thread cannot reach the API server."""
        return self._reachable

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def get(self, name: str) -> NamespaceView | None:
        """The view of a namespace held in memory, or None; never calls the API server."""
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            return None
        return NamespaceView(name=name, annotations=entry.annotations, labels=entry.labels)

    async def lookup(self, name: str) -> NamespaceView:
        view = self.get(name)
        if view is not None:
            return view
        if self._stopping.is_set():
            return self._fallback(name, "the namespace cache is stopped", reason="stopped")
        if not self._reachable:
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
        if entry is None:
            return NamespaceView(name=name, annotations=None)
        return NamespaceView(name=name, annotations=entry.annotations, labels=entry.labels)

    def _fallback(self, name: str, why: str, reason: str) -> NamespaceView:
        self.metrics.fallbacks.labels(reason=reason).inc()
        return NamespaceView(
            name=name, annotations=None, warning=FALLBACK_WARNING.format(name=name, why=why)
        )

    # the one GET for a namespace not seen yet ----------------------------------------------

    def _get_once(self, name: str) -> concurrent.futures.Future[_Entry | None]:
        with self._lock:
            future = self._inflight.get(name)
            if future is None:
                future = self._getters.submit(self._read, name)
                self._inflight[name] = future
                future.add_done_callback(lambda _f: self._forget(name))
            return future

    def _forget(self, name: str) -> None:
        with self._lock:
            self._inflight.pop(name, None)

    def _read(self, name: str) -> _Entry | None:
        from kubernetes.client.exceptions import ApiException

        try:
            response = self._core.read_namespace(
                name,
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
            parsed = _entry(_json(response.data))
        finally:
            response.release_conn()
        if parsed is None:
            return None
        found_name, entry = parsed
        with self._lock:
            # the watch may have delivered it meanwhile; its copy wins
            current = self._entries.setdefault(found_name, entry)
            self.metrics.cached.set(len(self._entries))
        return current

    # the watch thread ----------------------------------------------------------------------

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
                    logger.info("namespace watch expired (410 Gone): listing again")
                    self.metrics.watch_restarts.labels(reason="gone").inc()
                    if failures:
                        self._pause(failures)
                    failures += 1
                    continue
                self._failed(exc, failures)
                failures += 1
            except Exception as exc:  # connection refused, reset, timeout, bad data ...
                if self._stopping.is_set():
                    break
                version = None
                self._failed(exc, failures)
                failures += 1

    def _failed(self, exc: BaseException, failures: int) -> None:
        self._reachable = False
        self.metrics.watch_restarts.labels(reason="error").inc()
        delay = self._pause(failures)
        logger.warning(
            "namespace list/watch failed (%s: %s); retrying in %.2fs",
            type(exc).__name__,
            exc,
            delay,
        )

    def _pause(self, failures: int) -> float:
        """Sleep an exponential backoff with jitter (50-100 %), or until stopped."""
        ceiling = min(self._backoff_max, self._backoff_initial * 2.0 ** min(failures, 30))
        delay = ceiling * (0.5 + self._random.random() / 2)
        self._stopping.wait(delay)
        return delay

    def _list(self) -> str:
        response = self._core.list_namespace(
            _preload_content=False, _request_timeout=self._request_timeout
        )
        try:
            body = _json(response.data)
        finally:
            response.release_conn()
        items = body.get("items")
        meta = body.get("metadata")
        if not isinstance(items, list) or not isinstance(meta, Mapping):
            raise ValueError("namespace list: unexpected shape")
        version = str(meta.get("resourceVersion") or "")
        entries = dict(filter(None, (_entry(i) for i in items if isinstance(i, Mapping))))
        with self._lock:
            # replaced whole: namespaces deleted while we were away disappear too
            self._entries = entries
            self.metrics.cached.set(len(entries))
        self._reachable = True
        if not self._synced:
            logger.info("namespace cache synced: %d namespaces", len(entries))
        self._synced = True
        self.metrics.synced.set(1)
        return version

    def _watch_from(self, version: str) -> str:
        """Apply watch events from `version` until the server ends the stream; the new version."""
        from kubernetes import watch

        self._watch = w = watch.Watch()
        try:
            if self._stopping.is_set():
                return version
            stream = w.stream(
                self._core.list_namespace,
                resource_version=version,
                timeout_seconds=self._watch_timeout,
                allow_watch_bookmarks=True,
                _request_timeout=(self._request_timeout[0], self._watch_timeout + 10),
            )
            for event in stream:
                version = self._apply(event, version)
            self._reachable = True
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
        parsed = _entry(raw)
        if parsed is None:
            return version
        name, entry = parsed
        with self._lock:
            if kind == "DELETED":
                self._entries.pop(name, None)
            elif kind in ("ADDED", "MODIFIED"):
                self._entries[name] = entry
            self.metrics.cached.set(len(self._entries))
        logger.debug("namespace %s %s at %s", name, kind, version)
        return version


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
    **options: Any,
) -> WatchedNamespaces | StaticNamespaces:
    """The namespace source `serve` should use; not started yet.

    `in_cluster=None` means: in-cluster when the pod's service-account environment is there
    (`KUBERNETES_SERVICE_HOST`) and no kubeconfig was given. No cluster at all: a
    `StaticNamespaces` that knows nothing (namespace policy off), said so in the log.
    `options` go to `WatchedNamespaces` (timeouts, backoff).
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
    return WatchedNamespaces(configuration, registry=registry, **options)
