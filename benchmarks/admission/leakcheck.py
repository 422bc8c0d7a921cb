"""Does the app keep memory per admission? 65,000 admissions through the ASGI app in-process
(no TLS, no sockets), tracemalloc and RSS after every 15,000. The reviews: the padded golden
mix and 1,000 distinct variants of the KServe pod with credentials (another generateName
each), so that the memo of answers is filled and evicts all the time.

    .venv/bin/python benchmarks/admission/leakcheck.py
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import load_items

from webhook.app import create_app


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main() -> None:
    items = load_items()
    bodies = [item.body for item in items]
    credentials = next(item for item in items if item.name == "03-kserve-after-s3-credentials")
    for n in range(1_000):
        variant = json.loads(credentials.body)
        meta = variant["request"]["object"]["metadata"]
        meta["generateName"] = f"{meta.get('generateName', 'pod-')}{n:04d}-"
        bodies.append(json.dumps(variant, separators=(",", ":")).encode())
    app = create_app()

    async def admit(body: bytes) -> None:
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/mutate",
            "headers": [(b"content-type", b"application/json")],
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                assert message["status"] == 200

        await app(scope, receive, send)

    for i in range(5_000):  # warm: caches, metric children, allocator arenas
        await admit(bodies[i % len(bodies)])
    gc.collect()
    tracemalloc.start()
    print(f"after 5,000: traced 0.00 MiB, RSS {rss_mib():.1f} MiB")
    for done in range(20_000, 65_001, 15_000):
        for i in range(15_000):
            await admit(bodies[i % len(bodies)])
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] / 2**20
        print(f"after {done:,}: traced {traced:.2f} MiB, RSS {rss_mib():.1f} MiB")


if __name__ == "__main__":
    asyncio.run(main())
