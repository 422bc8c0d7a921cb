"""Loopback stand-ins for sources with cheap fingerprints: an HTTP file server that sends
ETag and Last-Modified (and answers HEAD), and the Hugging Face hub's revision endpoint.

Both count the requests they answer, so tests and the cost figures can say how many calls a
check made.
"""

from __future__ import annotations

import hashlib
import json
import threading
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StubServer:
    """`files[path] = bytes` served with an ETag (sha256 of the body) and a Last-Modified that
    changes when the body does; `hub[(repo, revision)] = commit` answers
    `GET /api/models/<repo>/revision/<revision>`. `headers=False` sends neither validator.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.modified: dict[str, float] = {}
        self.hub: dict[tuple[str, str], str] = {}
        self.validators = True
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _count(self) -> None:
                with owner.lock:
                    owner.requests.append((self.command, self.path))

            def do_HEAD(self) -> None:
                self._count()
                self._file(body=False)

            def do_GET(self) -> None:
                self._count()
                path = self.path.split("?", 1)[0]
                if path.startswith("/api/models/"):
                    self._hub(path)
                else:
                    self._file(body=True)

            def _hub(self, path: str) -> None:
                rest = path[len("/api/models/") :]
                repo, _, revision = rest.partition("/revision/")
                commit = owner.hub.get((repo, revision))
                if commit is None:
                    self.send_error(404)
                    return
                body = json.dumps({"id": repo, "_id": "x", "sha": commit}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _file(self, *, body: bool) -> None:
                data = owner.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                if owner.validators:
                    etag = hashlib.sha256(data).hexdigest()[:16]
                    self.send_header("ETag", f'"{etag}"')
                    stamp = owner.modified.get(self.path, 0.0)
                    self.send_header("Last-Modified", formatdate(stamp, usegmt=True))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def put(self, path: str, data: bytes, *, modified: float) -> None:
        self.files[path] = data
        self.modified[path] = modified

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
