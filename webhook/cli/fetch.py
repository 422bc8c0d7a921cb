"""`kserve-cache fetch`: the init container. Hit, or single-flight download, then serve or copy.

Prints one JSON result line on stdout; on failure also writes a human message to the
termination-message file (shown by `kubectl describe pod`) and exits with the class's code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Final

logger = logging.getLogger(__name__)

DEFAULT_TERMINATION_LOG: Final = "/dev/termination-log"
PAUSE_ENV: Final = "KSERVE_CACHE_TEST_PAUSE_AT"
"""Test hook: `<phase>[=<seconds>]` makes the lease holder sleep at that phase (see tests)."""


def add_parser(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "fetch",
        help="init container: serve a model from the cache, downloading it once on a miss",
        description="Make <cache-root>/models/<key> hold the model at --uri: a hit, or one "
        "download shared by all pods that start at once (single-flight lease), published "
        "with an atomic rename. Prints one JSON result line.",
    )
    p.add_argument("--uri", required=True, help="model URI, any scheme KServe supports")
    p.add_argument("--cache-root", required=True, type=Path, help="mount path of the cache PVC")
    p.add_argument("--key", required=True, help="cache key; must equal cache_key(uri, revision)")
    p.add_argument("--revision", default="", help="revision, part of the key (default none)")
    p.add_argument("--copy-to", type=Path, help="copy mode: copy the entry into this folder")
    add_read_arguments(p)
    p.add_argument(
        "--endpoint",
        default="",
        help="the source endpoint (scheme://host[:port]) the webhook mixed into --key",
    )
    add_version_arguments(p)
    add_lease_arguments(p)
    from webhook.cache.probe import add_probe_arguments

    add_probe_arguments(p)
    from webhook.cache.readonly import add_arguments as add_read_only_arguments

    add_read_only_arguments(p)  # --read-only, --on-miss, --miss-wait, --usage-dir (issue 16)
    p.add_argument(
        "--termination-log",
        default=DEFAULT_TERMINATION_LOG,
        help=f"file for the failure message (default {DEFAULT_TERMINATION_LOG})",
    )
    p.set_defaults(run=run)


def add_read_arguments(p: argparse.ArgumentParser) -> None:
    """`--prefetch`, `--parallel`, `--block-size`: how the entry is read (docs/performance.md)."""
    from webhook.cache.copy import DEFAULT_WORKERS, parse_block_size, parse_workers

    def checked(parse: Any, name: str) -> Any:
        def convert(text: str) -> Any:
            try:
                return parse(text)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from exc

        convert.__name__ = name
        return convert

    p.add_argument(
        "--prefetch",
        nargs="?",
        const=True,
        default=False,
        type=checked(_parse_bool, "true or false"),
        help="mount mode: read the entry in parallel into the node's page cache before the "
        "model server starts (within ~80%% of this container's memory limit)",
    )
    p.add_argument(
        "--parallel",
        type=checked(parse_workers, "worker count"),
        default=DEFAULT_WORKERS,
        help="threads reading the entry in copy mode and in the prefetch "
        f"(default {DEFAULT_WORKERS})",
    )
    p.add_argument(
        "--block-size",
        type=checked(parse_block_size, "size"),
        default="16Mi",
        help="bytes per read/write in copy mode, e.g. 16Mi (default; 64Ki to 256Mi)",
    )


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise ValueError(f"expected true or false, got {text!r}")
    return value == "true"


def add_version_arguments(p: argparse.ArgumentParser) -> None:
    """`--refresh`, `--digest`, `--verify` (mutable sources: docs/protocol.md, Versions)."""
    from webhook.cli.versionargs import digest_arg, refresh_arg

    p.add_argument(
        "--refresh",
        type=refresh_arg,
        default="never",
        metavar="POLICY",
        help="never (default: serve the cached version without asking the source), on-start "
        "(ask the source for its fingerprint at each start, download a new version when it "
        "changed), or interval=<duration> (ask at most once per interval per key)",
    )
    p.add_argument(
        "--digest",
        type=digest_arg,
        default="",
        metavar="sha256:HEX",
        help="serve exactly the version with this manifest digest, or fail (exit 12)",
    )
    p.add_argument(
        "--verify",
        default="size",
        choices=("size", "full"),
        help="what a hit checks: every file's size (default, one stat per file) or its "
        "sha256 (reads every byte)",
    )


def add_lease_arguments(p: argparse.ArgumentParser) -> None:
    """`--lease-ttl`, `--wait-timeout`, `--stall-timeout`, `--progress-interval`, shared by
    `fetch` and `warm`."""
    p.add_argument(
        "--lease-ttl",
        type=float,
        default=120.0,
        help="the holder rewrites its lease every TTL/4 seconds; a waiter takes a lease over "
        "after seeing no change for 1.25 x TTL on its own clock (default 120)",
    )
    p.add_argument(
        "--wait-timeout",
        type=float,
        default=3600.0,
        help="seconds to wait for another download of the same key (default 3600)",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=120.0,
        help="abort a download whose staging bytes have not grown for this many seconds "
        "(exit 10, stalled; default 120)",
    )
    p.add_argument(
        "--progress-interval",
        type=float,
        default=10.0,
        help="seconds between progress lines of a download or a wait (default 10)",
    )


COPY_ATTEMPTS = 3


def run(args: argparse.Namespace) -> int:
    from webhook.cache.copy import EntryVanished, copy_manifest_files
    from webhook.cache.download import default_downloader
    from webhook.cache.fetch import (
        ErrorKind,
        FetchError,
        Settings,
        check_key,
        check_writable,
    )
    from webhook.cache.layout import Layout
    from webhook.cache.versioned import Options, fetch_versioned, read_manifest_at

    # A deleted pod gets SIGTERM: unwind so the staging folder is removed and the lease freed.
    signal.signal(signal.SIGTERM, on_sigterm)
    start = time.monotonic()
    root: Path = args.cache_root
    try:
        if not root.is_dir():
            raise FetchError(
                ErrorKind.CACHE_NOT_WRITABLE,
                f"cache root {root} is not a directory: is the cache PVC mounted there?",
            )
        # Bad input changes nothing: checked before anything (the probe) writes to the volume.
        check_key(uri=args.uri, key=args.key, revision=args.revision, endpoint=args.endpoint)
        Settings(
            args.lease_ttl, args.wait_timeout, args.stall_timeout, args.progress_interval
        ).check()
        from webhook.cache import readonly

        readonly.check_flags(args)
        if args.read_only:  # a read-only consumer writes nothing: no probe, lease or staging
            from webhook.keys import source_endpoint

            source = source_endpoint(args.uri, os.environ)
            return readonly.run(args, downloader=default_downloader(), source=source, emit=_emit)
        from webhook.cache.probe import probe_from_args

        check_writable(Layout(root))
        probe_from_args(root, args)
        layout = Layout(root)
        for attempt in range(1, COPY_ATTEMPTS + 1):
            served = fetch_versioned(
                layout,
                uri=args.uri,
                key=args.key,
                revision=args.revision,
                downloader=default_downloader(),
                options=Options(
                    refresh=args.refresh,
                    digest=args.digest,
                    verify=args.verify,
                    copy_mode=args.copy_to is not None,
                ),
                settings=Settings(
                    args.lease_ttl, args.wait_timeout, args.stall_timeout, args.progress_interval
                ),
                on_phase=_pause_hook(os.environ.get(PAUSE_ENV, "")),
                endpoint=args.endpoint,
            )
            result = served.result  # path: the version resolved once, whatever the ref does
            line: dict[str, Any] = {
                "outcome": result.outcome,
                "key": result.key,
                "uri": result.uri,
                "revision": result.revision,
                "bytes": result.bytes,
                "files": result.files,
                "seconds": round(result.seconds, 3),
                "download_seconds": round(result.download_seconds, 3),
                "path": str(result.path),
                "version": served.to_dict(),
                "warnings": list(served.warnings),
            }
            if args.copy_to is None:
                if args.prefetch:
                    _prefetch(layout, args, result.path, line)
                break
            began = time.monotonic()
            # The manifest of the version resolved once, not of whatever the ref names now.
            manifest = read_manifest_at(result.path, args.key)
            try:
                if manifest is None:
                    raise EntryVanished(f"{result.path} was evicted before the copy")
                stats = copy_manifest_files(
                    result.path,
                    args.copy_to,
                    manifest,
                    workers=args.parallel,
                    block_size=args.block_size,
                )
            except EntryVanished as exc:
                # gc evicted the entry under us: what was copied is incomplete, fetch again.
                logger.warning("copy attempt %d incomplete, fetching again: %s", attempt, exc)
                if attempt == COPY_ATTEMPTS:
                    raise FetchError(
                        ErrorKind.DOWNLOAD_FAILED,
                        f"the cache entry kept disappearing while copying it: {exc}",
                    ) from exc
                continue
            except OSError as exc:
                raise _copy_error(exc, args.copy_to) from exc
            line["copied_to"] = str(args.copy_to)
            line["copy_seconds"] = round(time.monotonic() - began, 3)
            line["copied_bytes"] = stats.bytes
            line["seconds"] = round(time.monotonic() - start, 3)
            break
    except FetchError as exc:
        return _fail(args, exc.kind.value, exc.kind.exit_code, exc.message, start)
    except Terminated as exc:
        return _fail(args, "terminated", exc.code, TERMINATED_MESSAGE, start)
    except Exception as exc:  # the init container must always leave a readable reason
        logger.exception("fetch failed unexpectedly")
        kind = ErrorKind.DOWNLOAD_FAILED
        return _fail(args, kind.value, kind.exit_code, f"unexpected error: {exc}", start)
    _emit(line)
    _write_termination_message(args.termination_log, _success_message(line))
    return 0


def _success_message(line: dict[str, Any]) -> str:
    """What `kubectl describe pod` shows for the finished init container: the version served."""
    version = line.get("version") or {}
    details = [str(version.get("digest") or "no digest")]
    if version.get("commit"):
        details.append(f"commit {version['commit']}")
    if version.get("age_seconds") is not None:
        details.append(f"{_age(float(version['age_seconds']))} old")
    details.append(f"check: {version.get('check', '?')}")
    message = (
        f"kserve-cache fetch: {line['outcome']} {line['key']} version "
        f"{version.get('id', '?')} ({', '.join(details)})"
    )
    for warning in line.get("warnings") or []:
        message += f"; warning: {warning}"
    return message


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _prefetch(layout: Any, args: argparse.Namespace, path: Path, line: dict[str, Any]) -> None:
    """`--prefetch`: an optimisation, so a failure is reported in the result line and the log,
    never as a failed pod."""
    from webhook.cache.copy import EntryVanished
    from webhook.cache.layout import read_manifest
    from webhook.cache.prefetch import prefetch_manifest_files

    began = time.monotonic()
    try:
        manifest = read_manifest(layout, args.key)
        if manifest is None:
            raise EntryVanished(f"{path} has no manifest")
        stats = prefetch_manifest_files(path, manifest, workers=args.parallel)
    except (EntryVanished, OSError) as exc:
        logger.warning("prefetch skipped: %s", exc)
        line["prefetch_error"] = str(exc)
        return
    line["prefetched_bytes"] = stats.bytes
    line["prefetch_skipped_bytes"] = stats.skipped_bytes
    line["prefetch_seconds"] = round(time.monotonic() - began, 3)


def _copy_error(exc: OSError, dest: Path) -> Exception:
    import errno

    from webhook.cache.fetch import ErrorKind, FetchError

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return FetchError(ErrorKind.DISK_FULL, f"no space left in {dest} while copying the model")
    return FetchError(ErrorKind.DOWNLOAD_FAILED, f"copying the model to {dest} failed: {exc}")


def _fail(args: argparse.Namespace, kind: str, code: int, message: str, start: float) -> int:
    logger.error("%s", message)
    _emit(
        {
            "outcome": "error",
            "error": kind,
            "exit_code": code,
            "message": message,
            "key": args.key,
            "uri": args.uri,
            "revision": args.revision,
            "bytes": 0,
            "seconds": round(time.monotonic() - start, 3),
        }
    )
    _write_termination_message(args.termination_log, f"kserve-cache fetch: {kind}: {message}")
    return code


def _emit(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
    sys.stdout.flush()


def _write_termination_message(path: str, message: str) -> None:
    # Kubernetes provides the default file; outside a pod we must not create one in /dev.
    flags = os.O_WRONLY | os.O_TRUNC
    if path != DEFAULT_TERMINATION_LOG:
        flags |= os.O_CREAT
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        logger.debug("no termination message written to %s: %s", path, exc)
        return
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(message[:4000] + "\n")  # Kubernetes keeps at most 4096 bytes


def _pause_hook(spec: str) -> Any:
    if not spec:
        return None
    phase, _, seconds = spec.partition("=")
    delay = float(seconds or "60")

    def pause(name: str) -> None:
        if name == phase:
            logger.warning("test hook %s: pausing %.1fs at phase %s", PAUSE_ENV, delay, name)
            time.sleep(delay)

    return pause


TERMINATED_MESSAGE = (
    "terminated by SIGTERM (the pod is being deleted or the Job stopped): this process "
    "published nothing, removed its staging folder and released its lease"
)


class Terminated(BaseException):
    """SIGTERM: unwinds through every cleanup (staging, lease), then a result line is printed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.code = 128 + signum


def on_sigterm(signum: int, _frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup
    raise Terminated(signum)
