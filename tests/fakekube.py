"""A small stand-in for the Kubernetes API server on 127.0.0.1, for tests of the real client.

Speaks plain HTTP (no auth) for Namespaces and PersistentVolumeClaims (list with
resourceVersion, chunked watch streams of ADDED/MODIFIED/DELETED events, `410 Gone`, GET by
name, `403 Forbidden` on request), Pods (list, loose labelSelector), and PersistentVolumes
(GET, list) with creation of volumes and claims (POST, pre-bound pairs bind at once). Test
code drives it: change namespaces and claims, expire the watch history, drop connections,
refuse a resource, stop and start it on the same port. `write_kubeconfig` points the
`kubernetes` client at it.

    with FakeKube() as kube:
        kube.add_namespace("team-a", annotations={"cache.kserve.io/policy": "forced"})
        kube.add_claim("team-a", "kserve-model-cache")
        path = kube.write_kubeconfig(tmp_path / "kubeconfig")
"""

from __future__ import annotations

import contextlib
import copy
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

CREATED = "2024-01-01T00:00:00Z"
NAMESPACES = "namespaces"
CLAIMS = "persistentvolumeclaims"
VOLUMES = "persistentvolumes"


@dataclass(frozen=True)
class Event:
    rv: int
    type: str
    object: dict[str, Any]
    resource: str = NAMESPACES


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("true", "1")


def _matches(selector: str | None, labels: Mapping[str, str]) -> bool:
    """Equality (`a=b`, `a==b`), inequality (`a!=b`), existence (`a`, `!a`); commas are AND."""
    if not selector:
        return True
    for term in (t.strip() for t in selector.split(",")):
        if not term:
            continue
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


_PLURALS = {
    "Deployment": "deployments",
    "Secret": "secrets",
    "ConfigMap": "configmaps",
    "Service": "services",
    "MutatingWebhookConfiguration": "mutatingwebhookconfigurations",
    "StorageClass": "storageclasses",
    "CSIDriver": "csidrivers",
}


def _object_path(obj: Mapping[str, Any]) -> str:
    """The REST path of an object `put_object` stores."""
    api_version = str(obj["apiVersion"])
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    meta = obj.get("metadata") or {}
    plural = _PLURALS[str(obj["kind"])]
    where = f"/namespaces/{meta['namespace']}" if meta.get("namespace") else ""
    return f"{base}{where}/{plural}/{meta['name']}"


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], kube: FakeKube) -> None:
        self.kube = kube
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    # A safety net: a handler never blocks for ever on a client that went silent.
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.kube._track(self.connection, add=True)

    def finish(self) -> None:
        self.server.kube._track(self.connection, add=False)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        kube = self.server.kube
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        path = parts.path.rstrip("/")
        kube._record(Request("GET", path, query))
        segments = path.split("/")
        namespaced = len(segments) >= 6 and path.startswith("/api/v1/namespaces/")
        try:
            refused = kube._refused(path)
            if refused is not None:
                message = f'{refused} is forbidden: User "fake" cannot list resource "{refused}"'
                self._json(HTTPStatus.FORBIDDEN, _status(403, "Forbidden", message))
            elif path == "/api/v1/namespaces":
                if _truthy(query.get("watch")):
                    self._watch(NAMESPACES, None, query)
                else:
                    self._json(HTTPStatus.OK, kube._list_namespaces(query))
            elif path == "/api/v1/persistentvolumeclaims" or (
                namespaced and len(segments) == 6 and segments[5] == CLAIMS
            ):
                where = segments[4] if namespaced else None
                if _truthy(query.get("watch")):
                    self._watch(CLAIMS, where, query)
                else:
                    self._json(HTTPStatus.OK, kube._list_claims(where))
            elif namespaced and len(segments) == 7 and segments[5] == CLAIMS:
                found = kube._get_claim(segments[4], segments[6])
                if found is None:
                    message = f'persistentvolumeclaims "{segments[6]}" not found'
                    self._json(HTTPStatus.NOT_FOUND, _status(404, "NotFound", message))
                else:
                    self._json(HTTPStatus.OK, found)
            elif len(segments) == 5 and path.startswith("/api/v1/namespaces/"):
                kube._wait_get_delay()
                found = kube._get_namespace(segments[4])
                if found is None:
                    message = f'namespaces "{segments[4]}" not found'
                    self._json(HTTPStatus.NOT_FOUND, _status(404, "NotFound", message))
                else:
                    self._json(HTTPStatus.OK, found)
            elif path == f"/api/v1/{VOLUMES}" or path.startswith(f"/api/v1/{VOLUMES}/"):
                self._get_volume(segments)
            elif path == "/api/v1/pods":
                self._json(HTTPStatus.OK, kube._list_pods(None, query))
            elif (
                len(segments) == 6
                and path.startswith("/api/v1/namespaces/")
                and (segments[5] == "pods")
            ):
                self._json(HTTPStatus.OK, kube._list_pods(segments[4], query))
            elif kube._has_objects(path):
                self._get_object(path)
            else:
                self._json(HTTPStatus.NOT_FOUND, _status(404, "NotFound", "no such path"))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def _get_object(self, path: str) -> None:
        """GET or list of the objects `put_object` stored (Deployments, Secrets, ...)."""
        kube = self.server.kube
        resource = kube._resource_of(path)
        if resource in kube._forbidden:
            message = f'{resource} is forbidden: User "fake" cannot get resource "{resource}"'
            self._json(HTTPStatus.FORBIDDEN, _status(403, "Forbidden", message))
            return
        if resource in kube._broken:
            self._json(
                HTTPStatus.INTERNAL_SERVER_ERROR, _status(500, "InternalError", "etcd is sad")
            )
            return
        found = kube._object_at(path)
        if found is None:
            message = f'{resource} "{path.rsplit("/", 1)[-1]}" not found'
            self._json(HTTPStatus.NOT_FOUND, _status(404, "NotFound", message))
        else:
            self._json(HTTPStatus.OK, found)

    def _json(self, status: HTTPStatus, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _get_volume(self, segments: list[str]) -> None:
        kube = self.server.kube
        if len(segments) == 4:
            self._json(HTTPStatus.OK, kube._list_volumes())
            return
        found = kube.volume(segments[4]) if len(segments) == 5 else None
        if found is None:
            message = f'persistentvolumes "{segments[-1]}" not found'
            self._json(HTTPStatus.NOT_FOUND, _status(404, "NotFound", message))
        else:
            self._json(HTTPStatus.OK, found)

    def do_POST(self) -> None:
        """Create a PersistentVolume or a PersistentVolumeClaim (`409` when it exists)."""
        kube = self.server.kube
        path = urlsplit(self.path).path.rstrip("/")
        kube._record(Request("POST", path, {}))
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        segments = path.split("/")
        refused = kube._refused(path)
        if refused is not None:
            message = f'{refused} is forbidden: User "fake" cannot create resource "{refused}"'
            self._json(HTTPStatus.FORBIDDEN, _status(403, "Forbidden", message))
            return
        if path == f"/api/v1/{VOLUMES}":
            created = kube._create_volume(body)
        elif (
            len(segments) == 6
            and path.startswith("/api/v1/namespaces/")
            and (segments[5] == CLAIMS)
        ):
            body.setdefault("metadata", {})["namespace"] = segments[4]
            created = kube._create_claim(body)
        else:
            self._json(HTTPStatus.NOT_FOUND, _status(404, "NotFound", "no such path"))
            return
        if created is None:
            name = body.get("metadata", {}).get("name")
            message = f'{segments[-1]} "{name}" already exists'
            self._json(HTTPStatus.CONFLICT, _status(409, "AlreadyExists", message))
        else:
            self._json(HTTPStatus.CREATED, created)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _watch(self, resource: str, namespace: str | None, query: Mapping[str, str]) -> None:
        kube = self.server.kube
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        timeout = query.get("timeoutSeconds")
        deadline = time.monotonic() + float(timeout) if timeout else None
        for line in kube._events(resource, namespace, query.get("resourceVersion"), deadline):
            if line is None:
                # Dropped: end the stream without the last chunk, as a broken link does.
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._chunk(json.dumps(line).encode() + b"\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class FakeKube:
    """The fake API server; thread-safe controls for tests."""

    def __init__(self, *, port: int = 0) -> None:
        self._lock = threading.Condition()
        self._namespaces: dict[str, dict[str, Any]] = {}
        self._claims: dict[tuple[str, str], dict[str, Any]] = {}
        self._volumes: dict[str, dict[str, Any]] = {}
        self._objects: dict[str, dict[str, Any]] = {}
        self._broken: set[str] = set()
        self._forbidden: set[str] = set()
        self._pods: list[dict[str, Any]] = []
        self._history: list[Event] = []
        self._rv = 100
        self._oldest_rv = self._rv  # watches from before this are answered with 410 Gone
        self._gone_next: dict[str, int] = {}
        self._drops = 0  # bumped to cut every open watch
        self._stopping = False
        self._get_delay = 0.0
        self._connections: set[socket.socket] = set()
        self.requests: list[Request] = []
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeKube:
        if self._server is not None:
            return self
        with self._lock:
            self._stopping = False
        server = _Server(("127.0.0.1", self._port), self)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection; `start()` again reuses the port."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        server.shutdown()
        self._cut_connections()
        server.server_close()  # joins the handler threads
        thread.join()
        self._server = self._thread = None

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def write_kubeconfig(self, path: Path, *, namespace: str = "default") -> Path:
        """A kubeconfig (JSON is valid YAML) for http://127.0.0.1:PORT without auth."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                }
            ],
            "current-context": "fake",
            "preferences": {},
        }
        path.write_text(json.dumps(config, indent=2))
        return path

    # controls ------------------------------------------------------------------------------

    def add_namespace(
        self,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        quiet: bool = False,
    ) -> dict[str, Any]:
        """`quiet`: no watch event (a watch that lags; with `compact()`, one that missed it)."""
        with self._lock:
            if name in self._namespaces:
                raise ValueError(f"namespace {name!r} exists")
            rv = self._next_rv()
            obj = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": name,
                    "uid": str(uuid.uuid4()),
                    "resourceVersion": str(rv),
                    "creationTimestamp": CREATED,
                    "labels": {"kubernetes.io/metadata.name": name, **(labels or {})},
                    "annotations": dict(annotations or {}),
                },
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            }
            self._namespaces[name] = obj
            self._emit(Event(rv, "ADDED", copy.deepcopy(obj)), quiet=quiet)
            return copy.deepcopy(obj)

    def modify_namespace(
        self,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        quiet: bool = False,
    ) -> dict[str, Any]:
        """Replace the given maps (None leaves one as it is)."""
        with self._lock:
            obj = self._namespaces[name]
            rv = self._next_rv()
            meta = obj["metadata"]
            meta["resourceVersion"] = str(rv)
            if labels is not None:
                meta["labels"] = {"kubernetes.io/metadata.name": name, **labels}
            if annotations is not None:
                meta["annotations"] = dict(annotations)
            self._emit(Event(rv, "MODIFIED", copy.deepcopy(obj)), quiet=quiet)
            return copy.deepcopy(obj)

    def delete_namespace(self, name: str, *, quiet: bool = False) -> None:
        with self._lock:
            obj = self._namespaces.pop(name)
            rv = self._next_rv()
            obj["metadata"]["resourceVersion"] = str(rv)
            self._emit(Event(rv, "DELETED", copy.deepcopy(obj)), quiet=quiet)

    def add_claim(
        self,
        namespace: str,
        name: str,
        *,
        access_modes: tuple[str, ...] = ("ReadWriteMany",),
        phase: str = "Bound",
        quiet: bool = False,
        volume_name: str | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """A PersistentVolumeClaim; its Namespace need not exist here (think of `default`).
        `volume_name`: the PersistentVolume it is bound to (`spec.volumeName`)."""
        with self._lock:
            if (namespace, name) in self._claims:
                raise ValueError(f"claim {namespace}/{name} exists")
            rv = self._next_rv()
            obj = {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "uid": str(uuid.uuid4()),
                    "resourceVersion": str(rv),
                    "creationTimestamp": CREATED,
                    "finalizers": ["kubernetes.io/pvc-protection"],
                },
                "spec": {
                    "accessModes": list(access_modes),
                    "resources": {"requests": {"storage": "100Gi"}},
                    "volumeMode": "Filesystem",
                },
                "status": {"phase": phase},
            }
            if volume_name is not None:
                obj["spec"]["volumeName"] = volume_name
            if annotations:
                obj["metadata"]["annotations"] = dict(annotations)
            self._claims[namespace, name] = obj
            self._emit(Event(rv, "ADDED", copy.deepcopy(obj), CLAIMS), quiet=quiet)
            return copy.deepcopy(obj)

    def modify_claim(
        self,
        namespace: str,
        name: str,
        *,
        access_modes: tuple[str, ...] | None = None,
        phase: str | None = None,
        deleting: bool = False,
        quiet: bool = False,
    ) -> dict[str, Any]:
        """Change what is given; `deleting` sets a deletionTimestamp (held by its finalizer)."""
        with self._lock:
            obj = self._claims[namespace, name]
            rv = self._next_rv()
            obj["metadata"]["resourceVersion"] = str(rv)
            if access_modes is not None:
                obj["spec"]["accessModes"] = list(access_modes)
            if phase is not None:
                obj["status"]["phase"] = phase
            if deleting:
                obj["metadata"]["deletionTimestamp"] = CREATED
            self._emit(Event(rv, "MODIFIED", copy.deepcopy(obj), CLAIMS), quiet=quiet)
            return copy.deepcopy(obj)

    def delete_claim(self, namespace: str, name: str, *, quiet: bool = False) -> None:
        with self._lock:
            obj = self._claims.pop((namespace, name))
            rv = self._next_rv()
            obj["metadata"]["resourceVersion"] = str(rv)
            self._emit(Event(rv, "DELETED", copy.deepcopy(obj), CLAIMS), quiet=quiet)

    def add_volume(
        self, name: str, spec: Mapping[str, Any], *, phase: str = "Bound"
    ) -> dict[str, Any]:
        """A PersistentVolume with this `spec` (say `csi` or `nfs`, accessModes, claimRef)."""
        with self._lock:
            if name in self._volumes:
                raise ValueError(f"volume {name!r} exists")
            obj = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {
                    "name": name,
                    "uid": str(uuid.uuid4()),
                    "resourceVersion": str(self._next_rv()),
                    "creationTimestamp": CREATED,
                },
                "spec": copy.deepcopy(dict(spec)),
                "status": {"phase": phase},
            }
            self._volumes[name] = obj
            return copy.deepcopy(obj)

    def volume(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._volumes.get(name)
            return copy.deepcopy(found) if found is not None else None

    def claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get_claim(namespace, name)

    # any other kind (Deployments, Secrets, ConfigMaps, webhook configurations, storage) ---

    def put_object(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Store (or replace) an object of any kind; GET by name and list at its REST path."""
        stored = copy.deepcopy(dict(obj))
        meta = stored.setdefault("metadata", {})
        with self._lock:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta["resourceVersion"] = str(self._next_rv())
            meta.setdefault("creationTimestamp", CREATED)
            self._objects[_object_path(stored)] = stored
        return copy.deepcopy(stored)

    def remove_object(self, obj: Mapping[str, Any]) -> None:
        with self._lock:
            self._objects.pop(_object_path(obj), None)

    def break_resource(self, resource: str) -> None:
        """Answer `500` to every GET of `resource` that `put_object` serves (a failing server)."""
        with self._lock:
            self._broken.add(resource)

    def set_claim_volume(self, namespace: str, name: str, volume: str) -> None:
        """Bind a claim to a PersistentVolume by name (`spec.volumeName`)."""
        with self._lock:
            self._claims[namespace, name]["spec"]["volumeName"] = volume

    def _has_objects(self, path: str) -> bool:
        with self._lock:
            return any(p == path or p.startswith(path + "/") for p in self._objects) or (
                self._resource_of(path) in _PLURALS.values()
            )

    def _resource_of(self, path: str) -> str:
        segments = path.split("/")
        for plural in _PLURALS.values():
            if plural in segments:
                return plural
        return segments[-1]

    def _object_at(self, path: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._objects.get(path)
            if found is not None:
                return copy.deepcopy(found)
            if path.rsplit("/", 1)[-1] != self._resource_of(path):
                return None
            items = [
                copy.deepcopy(o)
                for p, o in sorted(self._objects.items())
                if p.rsplit("/", 1)[0] == path
            ]
            return {"kind": "List", "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    def forbid(self, resource: str, *, forbidden: bool = True) -> None:
        """Answer `403 Forbidden` to every request for `resource` (RBAC not granted)."""
        with self._lock:
            if forbidden:
                self._forbidden.add(resource)
            else:
                self._forbidden.discard(resource)

    def set_pods(self, pods: list[dict[str, Any]]) -> None:
        with self._lock:
            self._pods = copy.deepcopy(pods)

    def gone_next_watch(self, count: int = 1, *, resource: str = NAMESPACES) -> None:
        """The next `count` watches of `resource` get a 410 Gone ERROR event instead of events."""
        with self._lock:
            self._gone_next[resource] = self._gone_next.get(resource, 0) + count

    def compact(self) -> None:
        """Forget the event history: a watch from an older resourceVersion gets 410 Gone."""
        with self._lock:
            self._history.clear()
            self._oldest_rv = self._rv

    def drop_connections(self) -> None:
        """Cut every open watch stream mid-way (no terminating chunk)."""
        with self._lock:
            self._drops += 1
            self._lock.notify_all()
        self._cut_connections()

    def delay_gets(self, seconds: float) -> None:
        """Make `GET /api/v1/namespaces/<name>` answer this much later (a slow server)."""
        with self._lock:
            self._get_delay = seconds

    def gets_of(self, name: str) -> int:
        """How many times `GET /api/v1/namespaces/<name>` was asked."""
        path = f"/api/v1/namespaces/{name}"
        return sum(1 for r in list(self.requests) if r.path == path)

    def watches(self, resource: str | None = None) -> int:
        """Watches asked for, of `resource` across namespaces or (None) of anything."""
        return sum(
            1
            for r in list(self.requests)
            if _truthy(r.query.get("watch")) and resource in (None, r.path.rsplit("/", 1)[-1])
        )

    def lists(self, resource: str = NAMESPACES) -> int:
        """Lists (not watches) of `resource` across namespaces."""
        path = f"/api/v1/{resource}"
        return sum(
            1 for r in list(self.requests) if r.path == path and not _truthy(r.query.get("watch"))
        )

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    # internals (called from handler threads) -----------------------------------------------

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _emit(self, event: Event, *, quiet: bool = False) -> None:
        if not quiet:
            self._history.append(event)
        self._lock.notify_all()

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _cut_connections(self) -> None:
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _wait_get_delay(self) -> None:
        with self._lock:
            end = time.monotonic() + self._get_delay
            while not self._stopping and (left := end - time.monotonic()) > 0:
                self._lock.wait(left)

    def _list_namespaces(self, query: Mapping[str, str]) -> dict[str, Any]:
        with self._lock:
            items = [
                copy.deepcopy(ns)
                for ns in self._namespaces.values()
                if _matches(query.get("labelSelector"), ns["metadata"]["labels"])
            ]
            return {
                "apiVersion": "v1",
                "kind": "NamespaceList",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }

    def _refused(self, path: str) -> str | None:
        """The resource a request path is refused for, if it is."""
        with self._lock:
            segments = path.split("/")
            resource = segments[5] if len(segments) >= 6 else segments[-1]
            if path.startswith("/api/v1/namespaces/") and len(segments) == 5:
                resource = NAMESPACES
            if len(segments) >= 4 and segments[3] == VOLUMES:
                resource = VOLUMES
            return resource if resource in self._forbidden else None

    def _list_claims(self, namespace: str | None) -> dict[str, Any]:
        with self._lock:
            return {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaimList",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": [
                    copy.deepcopy(obj)
                    for (where, _), obj in self._claims.items()
                    if namespace in (None, where)
                ],
            }

    def _list_volumes(self) -> dict[str, Any]:
        with self._lock:
            return {
                "apiVersion": "v1",
                "kind": "PersistentVolumeList",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": [copy.deepcopy(v) for v in self._volumes.values()],
            }

    def _create_volume(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """As the API server does for a pre-bound volume: stored `Available`, then `Bound`
        once its claimRef names an existing claim (the PV controller's part, made instant)."""
        with self._lock:
            name = body["metadata"]["name"]
            if name in self._volumes:
                return None
            obj = copy.deepcopy(body)
            obj["metadata"].update(uid=str(uuid.uuid4()), resourceVersion=str(self._next_rv()))
            obj["status"] = {"phase": "Available"}
            self._volumes[name] = obj
            self._bind_all()
            return copy.deepcopy(obj)

    def _create_claim(self, body: dict[str, Any]) -> dict[str, Any] | None:
        with self._lock:
            key = (body["metadata"]["namespace"], body["metadata"]["name"])
            if key in self._claims:
                return None
            obj = copy.deepcopy(body)
            rv = self._next_rv()
            obj["metadata"].update(uid=str(uuid.uuid4()), resourceVersion=str(rv))
            obj["status"] = {"phase": "Pending"}
            self._claims[key] = obj
            self._bind_all()
            self._emit(Event(rv, "ADDED", copy.deepcopy(obj), CLAIMS))
            return copy.deepcopy(obj)

    def _bind_all(self) -> None:
        """Bind each claim naming a volume whose claimRef names it back (pre-bound pairs)."""
        for volume in self._volumes.values():
            ref = volume["spec"].get("claimRef") or {}
            claim = self._claims.get((ref.get("namespace"), ref.get("name")))  # type: ignore[arg-type]
            if claim is None or claim["spec"].get("volumeName") != volume["metadata"]["name"]:
                continue
            volume["status"] = {"phase": "Bound"}
            ref["uid"] = claim["metadata"]["uid"]
            claim["status"] = {"phase": "Bound", "accessModes": claim["spec"]["accessModes"]}

    def _get_claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._claims.get((namespace, name))
            return copy.deepcopy(found) if found is not None else None

    def _get_namespace(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._namespaces.get(name)
            return copy.deepcopy(found) if found is not None else None

    def _list_pods(self, namespace: str | None, query: Mapping[str, str]) -> dict[str, Any]:
        with self._lock:
            items = [
                copy.deepcopy(pod)
                for pod in self._pods
                if (namespace is None or pod.get("metadata", {}).get("namespace") == namespace)
                and _matches(query.get("labelSelector"), pod.get("metadata", {}).get("labels", {}))
            ]
            return {
                "apiVersion": "v1",
                "kind": "PodList",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }

    def _events(
        self, resource: str, namespace: str | None, since: str | None, deadline: float | None
    ) -> Iterator[dict[str, Any] | None]:
        """Watch events of `resource` (in `namespace`, None: all) as dicts; `None` means: cut
        the connection now."""

        def wanted(event: Event) -> bool:
            return event.resource == resource and (
                namespace is None or event.object["metadata"].get("namespace") == namespace
            )

        with self._lock:
            drops = self._drops
            early: dict[str, Any] | None = None
            pending: list[dict[str, Any]] = []
            position = self._rv
            if self._gone_next.get(resource):
                self._gone_next[resource] -= 1
                early = self._gone(since)
            elif since in (None, "", "0"):
                # No resourceVersion: the current state as ADDED events, then changes.
                current = (
                    list(self._namespaces.values())
                    if resource == NAMESPACES
                    else [c for (w, _), c in self._claims.items() if namespace in (None, w)]
                )
                pending = [{"type": "ADDED", "object": copy.deepcopy(o)} for o in current]
            elif not since.isdigit():
                early = {"type": "ERROR", "object": _status(400, "BadRequest", "bad rv")}
            elif int(since) < self._oldest_rv:
                early = self._gone(since)
            else:
                position = int(since)
        if early is not None:
            yield early
            return
        for event in pending:
            yield event
        while True:
            with self._lock:
                while True:
                    if self._stopping or self._drops != drops:
                        break
                    fresh = [e for e in self._history if e.rv > position]
                    if fresh:
                        position = fresh[-1].rv  # others' events move the position on too
                    news = [e for e in fresh if wanted(e)]
                    if news:
                        break
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return
                    self._lock.wait(0.5 if left is None else min(left, 0.5))
                if self._stopping or self._drops != drops:
                    news = []
                    cut = True
                else:
                    cut = False
            if cut:
                yield None
                return
            for event in news:
                yield {"type": event.type, "object": event.object}

    def _gone(self, since: str | None) -> dict[str, Any]:
        message = f"too old resource version: {since} ({self._rv})"
        return {"type": "ERROR", "object": _status(410, "Expired", message)}
