"""`kserve-cache stats`: entries, bytes, last use, hits, misses and hit rate over a window, as a
table, JSON or Prometheus text, or served at /metrics (`--serve`, a small exporter).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
from typing import Any

from webhook.cache.progress import human_bytes
from webhook.cli.gc import duration_arg, existing_dir, human_age, table

logger = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "stats",
        help="cache contents and hit/miss figures as a table, JSON or Prometheus text",
        description="Read-only report of the cache: entries, sizes, last use, hits, misses, "
        "waits, hit rate over --window and free space.",
    )
    p.add_argument("--cache-root", required=True, type=existing_dir, help="the cache volume")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument(
        "--prometheus", action="store_true", help="print Prometheus text exposition format"
    )
    fmt.add_argument(
        "--serve",
        action="store_true",
        help="serve the Prometheus figures over HTTP at /metrics (an exporter; read-only)",
    )
    p.add_argument(
        "--host",
        default="0.0.0.0",  # noqa: S104 - an exporter in a pod is scraped from outside it
        help="with --serve: address to bind (default 0.0.0.0)",
    )
    p.add_argument(
        "--port", type=port_arg, default=9108, help="with --serve: port to bind (default 9108)"
    )
    p.add_argument(
        "--min-interval",
        type=duration_arg,
        default=10.0,
        metavar="DURATION",
        help="with --serve: re-read the volume at most this often; scrapes in between get "
        "the last figures (default 10s)",
    )
    p.add_argument(
        "--window",
        type=duration_arg,
        default=86400.0,
        metavar="DURATION",
        help="hit rate over this recent period (default 24h)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from webhook.cache.layout import Layout
    from webhook.cache.stats import collect, stats_to_dict, to_prometheus

    if args.window <= 0:
        sys.stderr.write("kserve-cache stats: error: --window must be more than zero\n")
        return 2
    if args.serve:
        return serve(args)
    stats = collect(Layout(args.cache_root), window=args.window)
    if args.prometheus:
        sys.stdout.write(to_prometheus(stats, window_label=window_text(args.window)))
    elif args.json:
        sys.stdout.write(json.dumps(stats_to_dict(stats), indent=1, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render(stats))
    return 0


def port_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0-65535)")
    return value


class Exporter:
    """The text a scrape gets: read from the volume at most every `min_interval` seconds, one
    reader at a time (a scrape burst never multiplies the walk of a large cache)."""

    def __init__(self, root: Any, *, window: float, min_interval: float) -> None:
        import threading

        self.root = root
        self.window = window
        self.min_interval = min_interval
        self._lock = threading.Lock()
        self._text = ""
        self._at = float("-inf")
        self.collections = 0

    def text(self) -> str:
        import time

        from webhook.cache.layout import Layout
        from webhook.cache.stats import collect, to_prometheus

        with self._lock:
            if time.monotonic() - self._at >= self.min_interval:
                started = time.monotonic()
                stats = collect(Layout(self.root), window=self.window)
                took = time.monotonic() - started
                self._text = to_prometheus(stats, window_label=window_text(self.window)) + (
                    "# HELP kserve_cache_exporter_collect_seconds Time to read the figures "
                    "from the volume.\n"
                    "# TYPE kserve_cache_exporter_collect_seconds gauge\n"
                    f"kserve_cache_exporter_collect_seconds {took:.6f}\n"
                )
                self._at = time.monotonic()
                self.collections += 1
            return self._text


def serve(args: argparse.Namespace) -> int:
    """`stats --serve`: GET /metrics (Prometheus text), GET /healthz; stops on SIGTERM/SIGINT."""
    import signal
    import threading
    from http import HTTPStatus
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from prometheus_client import CONTENT_TYPE_LATEST

    exporter = Exporter(args.cache_root, window=args.window, min_interval=args.min_interval)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *items: Any) -> None:
            logger.debug("%s %s", self.address_string(), format % items)

        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                try:
                    body = exporter.text().encode("utf-8")
                except OSError as exc:  # the volume went away: say so, keep serving
                    logger.error("cannot read the cache figures: %s", exc)
                    self._send(
                        HTTPStatus.SERVICE_UNAVAILABLE,
                        f"cannot read {args.cache_root}: {exc}\n".encode(),
                        "text/plain; charset=utf-8",
                    )
                    return
                self._send(HTTPStatus.OK, body, CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    try:
        server = ThreadingHTTPServer((args.host, args.port), Handler)
    except OSError as exc:
        sys.stderr.write(
            f"kserve-cache stats: error: cannot listen on {args.host}:{args.port}: {exc}\n"
        )
        return 2
    server.daemon_threads = True
    host, port = str(server.server_address[0]), int(server.server_address[1])
    sys.stderr.write(f"serving the figures of {args.cache_root} on http://{host}:{port}/metrics\n")
    sys.stderr.flush()

    def stop(_signum: int, _frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


def window_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= max(size, 2 * 86400 if unit == "d" else 0) and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def render(stats: Any) -> str:
    from webhook.cache.stats import rows

    now = stats.now
    body = [
        (
            k.key if k.present else f"{k.key} (evicted)",
            human_bytes(k.bytes) if k.present else "-",
            "-" if k.last_used is None else human_age(now - k.last_used),
            str(k.hits),
            str(k.misses),
            str(k.waits),
            f"{k.window_hits}/{k.window_misses}/{k.window_waits}",
        )
        for k in rows(stats)
    ]
    window = window_text(stats.window)
    out = []
    if body:
        out.append(
            table(("KEY", "SIZE", "LAST USED", "HITS", "MISSES", "WAITS", f"{window} H/M/W"), body)
        )
    else:
        out.append("the cache is empty\n")
    rate = stats.hit_rate
    out.append(
        f"entries: {len(stats.entries)}, size: {human_bytes(stats.bytes)}, "
        f"hit rate ({window}): {'-' if rate is None else f'{100 * rate:.1f}%'}"
        f" ({stats.total('window_hits')} hits, {stats.total('window_misses')} misses, "
        f"{stats.total('window_waits')} waits)\n"
    )
    fs = stats.filesystem
    if fs is not None:
        out.append(
            f"filesystem: {human_bytes(fs.free)} free of {human_bytes(fs.total)} "
            f"({fs.usage_percent():.1f}% used)\n"
        )
    if stats.staging or stats.leases:
        out.append(f"downloads: {stats.staging} staging folders, {stats.leases} leases\n")
    stamp = datetime.datetime.fromtimestamp(now, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    out.append(f"as of {stamp}\n")
    return "".join(out)
