"""`kserve-cache serve`: the webhook over TLS (uvicorn), with hot reload of config and certs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="run the admission webhook (TLS)",
        description="Run the mutating admission webhook over TLS 1.2+.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8443, help="port to bind (default 8443)")
    p.add_argument("--cert-file", type=Path, help="PEM serving certificate (reloaded on change)")
    p.add_argument("--key-file", type=Path, help="PEM private key of --cert-file")
    p.add_argument(
        "--self-signed",
        action="store_true",
        help="make a throwaway CA and a certificate for localhost in --cert-dir",
    )
    p.add_argument(
        "--cert-dir",
        type=Path,
        default=Path("certs"),
        help="where --self-signed writes ca.crt, tls.crt, tls.key (default ./certs)",
    )
    p.add_argument("--config", type=Path, help="cluster config YAML (reloaded on change)")
    p.add_argument(
        "--fetcher-image",
        default=os.environ.get("KSERVE_CACHE_FETCHER_IMAGE") or None,
        metavar="IMAGE",
        help="the injected init container's image when the config sets no "
        "initContainer.image (default: $KSERVE_CACHE_FETCHER_IMAGE, else the built-in one)",
    )
    cluster = p.add_mutually_exclusive_group()
    cluster.add_argument(
        "--kubeconfig",
        help="watch Namespace annotations through this kubeconfig (default: in-cluster "
        "service account when running in a pod, else no cluster: namespace policy off)",
    )
    cluster.add_argument(
        "--no-cluster",
        action="store_true",
        help="never contact a cluster: namespace policy off",
    )
    p.add_argument(
        "--no-claim-check",
        action="store_true",
        help="do not watch PersistentVolumeClaims (pods are injected even when the cache "
        "claim is missing from their namespace)",
    )
    p.add_argument(
        "--reload-interval",
        type=float,
        default=2.0,
        help="seconds between checks of the config and certificate files (default 2)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=3 * 1024 * 1024,
        help="largest AdmissionReview accepted; larger gets 413 (default 3 MiB)",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=0.0,
        help="on SIGTERM, report not-ready and keep serving this long before stopping",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="server processes sharing the port (SO_REUSEPORT), for more than one core; each "
        "reloads the certificate and config and watches Namespaces itself (default 1)",
    )
    p.add_argument(
        "--floor-endpoint",
        action="store_true",
        help="also serve POST /floor, a no-op that reads the body and answers allowed "
        "(the baseline of benchmarks/admission; off by default)",
    )
    p.set_defaults(run=run)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def check_serving_files(cert_file: Path, key_file: Path) -> str | None:
    """Why `cert_file`/`key_file` cannot serve TLS (naming the file), or None when they can."""
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    for flag, path in (("--cert-file", cert_file), ("--key-file", key_file)):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return f"{flag} {path}: no such file"
        except OSError as exc:
            return f"{flag} {path}: cannot read: {exc.strerror or exc}"
        if flag == "--cert-file":
            if b"PRIVATE KEY-----" in data and b"CERTIFICATE-----" not in data:
                return (
                    f"--cert-file {path} holds a private key, not a certificate "
                    "(are --cert-file and --key-file swapped?)"
                )
            try:
                x509.load_pem_x509_certificates(data)
            except ValueError:
                return f"--cert-file {path}: not a PEM certificate"
        else:
            if b"CERTIFICATE-----" in data and b"PRIVATE KEY-----" not in data:
                return (
                    f"--key-file {path} holds a certificate, not a private key "
                    "(are --cert-file and --key-file swapped?)"
                )
            try:
                load_pem_private_key(data, password=None)
            except (ValueError, TypeError):
                return f"--key-file {path}: not an unencrypted PEM private key"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        return f"--key-file {key_file} does not belong to --cert-file {cert_file}: {exc.reason}"
    return None


class _GracefulServer:
    """uvicorn's Server, whose first SIGTERM/SIGINT first turns readiness off for a while."""

    @staticmethod
    def make(config: Any, *, state: Any, drain_seconds: float) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            draining = False

            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                state.shutting_down = True
                if self.draining or drain_seconds <= 0:
                    super().handle_exit(sig, frame)
                    return
                self.draining = True
                logger.info("signal %s: not ready, stopping in %.1fs", sig, drain_seconds)
                loop = asyncio.get_event_loop()
                loop.call_soon_threadsafe(
                    loop.call_later, drain_seconds, super().handle_exit, sig, frame
                )

        return Server(config)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket that other worker processes bind too: the kernel spreads the
    connections between them."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _supervise(args: argparse.Namespace, *, cert_file: Path, key_file: Path) -> int:
    """Fork `args.workers` servers; forward SIGTERM/SIGINT to them (each drains on its own) and
    wait. A worker that dies on its own stops the others: the pod restarts as a whole."""
    children: list[int] = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:  # the worker: serve as a single process on a shared port
            os.setpgid(0, 0)  # Ctrl-C reaches the supervisor only, which forwards it once
            worker = argparse.Namespace(**vars(args))
            worker.workers, worker.reuse_port, worker.self_signed = 1, True, False
            worker.cert_file, worker.key_file = cert_file, key_file
            code = 1
            try:
                code = run(worker)
            finally:
                os._exit(code)
        children.append(pid)
    logger.info("supervising %d workers: %s", len(children), children)
    stopping = False
    received: list[int] = []

    def forward(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if frame is not None:  # a real signal, not a worker's death
            received.append(sig)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    remaining = set(children)
    while remaining:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        remaining.discard(pid)
        exit_code = os.waitstatus_to_exitcode(status)
        if not stopping:
            logger.error("worker %s exited (%s): stopping the others", pid, exit_code)
            forward(signal.SIGTERM, None)
            code = 1
        elif exit_code not in (0, -signal.SIGTERM, -signal.SIGINT):
            code = code or 1
    if code == 0 and received:
        # like a single uvicorn process: end by the signal that stopped us (exit code 143)
        signal.signal(received[0], signal.SIG_DFL)
        signal.raise_signal(received[0])
    return code


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from webhook.app import create_app
    from webhook.certs import write_self_signed
    from webhook.clusterconfig import ConfigError
    from webhook.config import ConfigStore
    from webhook.tls import CertificateExpiry, CertReloader, harden

    if args.self_signed:
        files = write_self_signed(
            args.cert_dir, hosts=sorted({"localhost", "127.0.0.1", args.host})
        )
        cert_file, key_file = files.cert_file, files.key_file
        print(f"self-signed CA: {files.ca_file.resolve()}", file=sys.stderr)  # noqa: T201
        print(  # noqa: T201
            f"try: curl --cacert {files.ca_file} https://localhost:{args.port}/healthz",
            file=sys.stderr,
        )
    elif args.cert_file and args.key_file:
        cert_file, key_file = args.cert_file, args.key_file
        problem = check_serving_files(cert_file, key_file)
        if problem is not None:
            print(f"serve: {problem}", file=sys.stderr)  # noqa: T201
            return 2
    else:
        print("serve: give --cert-file and --key-file, or --self-signed", file=sys.stderr)  # noqa: T201
        return 2

    try:
        store = ConfigStore(args.config, fetcher_image=args.fetcher_image)
    except ConfigError as exc:
        print(f"serve: {exc}", file=sys.stderr)  # noqa: T201
        return 2

    if args.workers > 1:
        return _supervise(args, cert_file=cert_file, key_file=key_file)

    from prometheus_client import CollectorRegistry

    from webhook.namespaces import namespace_source_from_environment

    registry = CollectorRegistry()
    registry.register(CertificateExpiry(cert_file))  # type: ignore[arg-type]
    try:
        namespaces = namespace_source_from_environment(
            registry=registry,
            kubeconfig=None if args.no_cluster else args.kubeconfig,
            in_cluster=False if args.no_cluster else None,
            watch_claims=not args.no_claim_check,
        )
    except Exception as exc:  # unreadable kubeconfig, no service account ...
        print(f"serve: cannot reach a cluster for namespace policy: {exc}", file=sys.stderr)  # noqa: T201
        return 2

    app = create_app(
        store=store,
        namespaces=namespaces,
        registry=registry,
        max_body=args.max_body_bytes,
        reload_interval=args.reload_interval,
        floor=args.floor_endpoint,
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        ssl_certfile=str(cert_file),
        ssl_keyfile=str(key_file),
        loop="none",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=30,
    )
    config.load()
    assert config.ssl is not None  # noqa: S101 - uvicorn made it from the files above
    reloader = CertReloader(harden(config.ssl), cert_file, key_file)
    server = _GracefulServer.make(config, state=app.state.kc, drain_seconds=args.drain_seconds)

    sockets = [_listen(args.host, args.port)] if getattr(args, "reuse_port", False) else None

    async def main() -> None:
        watcher = asyncio.create_task(reloader.run(args.reload_interval))
        namespaces.start()
        try:
            await server.serve(sockets=sockets)
        finally:
            for sock in sockets or ():
                sock.close()
            namespaces.stop()  # blocks briefly: the server has stopped by now
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    logger.info("serving on https://%s:%s", args.host, args.port)
    # Everything imported and built so far lives as long as the process: keep it out of the
    # garbage collector's full passes (~100k objects, tens of ms each on a small core, which
    # showed up as p99 latency); per-request garbage is still collected as usual.
    gc.freeze()
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        asyncio.run(main())
    return 0
