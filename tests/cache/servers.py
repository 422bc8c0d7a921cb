"""Local stores for tests and the coldstart benchmark: moto S3 and a plain HTTP file server.

Both count what they serve (object GETs and bytes), so tests can check that one download
happened. Run the S3 one as its own process: `python tests/cache/servers.py s3 [--port N]`
prints `PORT <n>` on stdout, then serves until killed; `GET /_counts` returns the counters and
`DELETE /_counts` resets them.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COUNTS_PATH = "/_counts"


THROTTLE_PATH = "/_throttle"


class CountingApp:
    """WSGI middleware counting object GETs and the body bytes they returned.

    `POST /_throttle` with a number of seconds makes every object body come in 64 KiB pieces
    that many seconds apart (0 switches it off), so a test can act in the middle of a download.
    """

    CHUNK = 64 * 1024

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.object_gets = 0
        self.object_bytes = 0
        self.throttle = 0.0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "")
        if path == THROTTLE_PATH:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            self.throttle = float(environ["wsgi.input"].read(length) or b"0")
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]
        if path == COUNTS_PATH:
            with self.lock:
                if method == "DELETE":
                    self.object_gets = self.object_bytes = 0
                body = json.dumps(
                    {"object_gets": self.object_gets, "object_bytes": self.object_bytes}
                ).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        query = environ.get("QUERY_STRING", "")
        is_object_get = (
            method == "GET"
            and not path.startswith("/moto-api")
            and path.strip("/").count("/") >= 1
            and "list-type" not in query
            and "uploads" not in query
        )
        result = self.app(environ, start_response)
        if not is_object_get:
            return result
        with self.lock:
            self.object_gets += 1
        return self._counted(result)

    def _counted(self, result: Iterable[bytes]) -> Iterator[bytes]:
        try:
            for whole in result:
                pieces = [whole]
                if self.throttle:
                    pieces = [whole[i : i + self.CHUNK] for i in range(0, len(whole), self.CHUNK)]
                for chunk in pieces:
                    if self.throttle:
                        time.sleep(self.throttle)
                    with self.lock:
                        self.object_bytes += len(chunk)
                    yield chunk
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()


def serve_s3(port: int) -> None:
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    app = CountingApp(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)
    sys.stdout.write(f"PORT {server.server_address[1]}\n")
    sys.stdout.flush()
    server.serve_forever()


class FileServer:
    """A threaded HTTP server on 127.0.0.1 serving in-memory files as octet-stream.

    `throttle[path] = seconds` sleeps that long between 64 KiB chunks of that file, so a test
    can catch a download in the middle; `hang[path] = n` makes the next n GETs of it send the
    headers and one chunk, then nothing (a stalled server). Counts GETs and body bytes per path.
    """

    CHUNK = 64 * 1024

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.throttle: dict[str, float] = {}
        self.hang: dict[str, int] = {}
        self.release = threading.Event()
        self.gets: dict[str, int] = {}
        self.bytes: dict[str, int] = {}
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = owner.files.get(self.path)
                with owner.lock:
                    owner.gets[self.path] = owner.gets.get(self.path, 0) + 1
                if body is None:
                    self.send_error(404)
                    return
                with owner.lock:
                    hang = owner.hang.get(self.path, 0) > 0
                    if hang:
                        owner.hang[self.path] -= 1
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if hang:
                    try:
                        self.wfile.write(body[: owner.CHUNK])
                        self.wfile.flush()
                    except OSError:
                        return
                    owner.release.wait(600)  # until the server stops
                    return
                for start in range(0, len(body), owner.CHUNK):
                    delay = owner.throttle.get(self.path, 0.0)
                    if delay:
                        time.sleep(delay)
                    chunk = body[start : start + owner.CHUNK]
                    try:
                        self.wfile.write(chunk)
                    except OSError:
                        return  # the client was killed
                    with owner.lock:
                        owner.bytes[self.path] = owner.bytes.get(self.path, 0) + len(chunk)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients killed by the tests break connections on purpose

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["s3"])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    serve_s3(args.port)


if __name__ == "__main__":
    main()
