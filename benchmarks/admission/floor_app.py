"""The parse floor of the admission benchmark: the least a correct admission handler does.

A raw ASGI app (no framework) that reads the body, parses it with orjson, and allows the review
(answering with its `uid`), served by the same uvicorn settings as `kserve-cache serve` (TLS,
httptools, uvloop, one process, frozen start-up heap). `/mutate` is compared with it:

    .venv/bin/python benchmarks/admission/floor_app.py --port 18444 --cert-dir certs
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

HEADERS = [(b"content-type", b"application/json")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["method"] == "GET":  # readiness probe of the benchmark
        body = b"ok"
    else:
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        review = orjson.loads(b"".join(chunks))
        body = orjson.dumps(
            {
                "apiVersion": review["apiVersion"],
                "kind": "AdmissionReview",
                "response": {"uid": review["request"]["uid"], "allowed": True},
            }
        )
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*HEADERS, (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main() -> int:
    import uvicorn
    import uvloop

    from webhook.tls import harden

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert-dir", type=Path, required=True, help="tls.crt and tls.key")
    args = parser.parse_args()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        ssl_certfile=str(args.cert_dir / "tls.crt"),
        ssl_keyfile=str(args.cert_dir / "tls.key"),
        loop="none",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
    )
    config.load()
    if config.ssl is not None:  # the same TLS settings as `kserve-cache serve`
        harden(config.ssl)
    server = uvicorn.Server(config)
    gc.freeze()
    uvloop.run(server.serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
