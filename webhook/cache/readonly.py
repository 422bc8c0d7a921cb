"""Read-only consumers of a shared cache (`fetch --read-only`): serve a hit, wait a bounded time
for a trusted writer to publish a miss, or download privately into the pod's own folder.

Nothing here writes under the cache root: no lease, no staging, no usage record, no probe
record. Usage can go to a separate writable folder (`--usage-dir`) that `gc --usage-dir` reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import logging
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from webhook.cache.copy import EntryVanished, copy_manifest_files
from webhook.cache.fetch import Downloader, ErrorKind, FetchError, check_key, seal
from webhook.cache.gc import Snapshot
from webhook.cache.layout import Layout, Manifest, read_manifest, read_usage, record_usage
from webhook.keys import is_valid_key

logger = logging.getLogger(__name__)

DEFAULT_MISS_WAIT: Final = 300.0
_FIRST_POLL: Final = 0.1
_MAX_POLL: Final = 2.0
_PRIVATE_PREFIX: Final = ".kserve-cache-private."


class OnMiss(enum.Enum):
    """What a read-only consumer does when the entry is not published within --miss-wait."""

    WAIT = "wait"
    PRIVATE = "private"


@dataclass(frozen=True)
class ReadOnlyResult:
    outcome: str  # "hit", "waited" or "private"
    key: str
    uri: str
    revision: str
    path: Path  # the entry served, or the private copy
    bytes: int
    files: int
    seconds: float
    waited_seconds: float = 0.0
    download_seconds: float = 0.0
    copied_to: Path | None = None
    usage: str = "not-recorded"  # "recorded", "not-recorded" or "failed"
    reason: str = ""  # why a private download happened


def entry_problems(entry: Path, manifest: Manifest) -> list[str]:
    """What is missing or of the wrong size in an entry against its manifest (one stat each)."""
    problems = []
    for item in manifest.files:
        rel = Path(item.path)
        if rel.is_absolute() or ".." in rel.parts:
            problems.append(f"{item.path}: outside the entry")
            continue
        try:
            st = (entry / rel).lstat()
        except OSError as exc:
            problems.append(f"{item.path}: {exc.strerror or exc}")
            continue
        if not (entry / rel).is_file() or (entry / rel).is_symlink():
            problems.append(f"{item.path}: not a regular file")
        elif st.st_size != item.size:
            problems.append(f"{item.path}: {st.st_size} bytes, the manifest says {item.size}")
    return problems


def _check_usage_dir(layout: Layout, usage_dir: Path | None) -> None:
    if usage_dir is None:
        return
    root, target = layout.root.resolve(), usage_dir.resolve()
    if target == root or root in target.parents:
        raise FetchError(
            ErrorKind.BAD_ARGUMENTS,
            f"--usage-dir {usage_dir} is inside the read-only cache {layout.root}; give a "
            "separate writable folder (or none: usage is then not recorded)",
        )


def serve_read_only(
    layout: Layout,
    *,
    uri: str,
    key: str,
    revision: str = "",
    endpoint: str = "",
    source: str = "",
    copy_to: Path | None = None,
    on_miss: OnMiss = OnMiss.WAIT,
    miss_wait: float = DEFAULT_MISS_WAIT,
    downloader: Downloader,
    usage_dir: Path | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ReadOnlyResult:
    """Serve `models/<key>` without writing to the cache: a hit (copied into `copy_to` in copy
    mode), a wait of at most `miss_wait` seconds for a trusted writer, then a failure
    (`OnMiss.WAIT`, `ErrorKind.WAIT_TIMEOUT`) or a private download into `copy_to`.

    `endpoint` is the one the webhook mixed into the key (`--endpoint`); `source` is the one
    this process downloads from: an entry recorded from another is refused, as for writers.
    """
    check_key(uri=uri, key=key, revision=revision, endpoint=endpoint)
    if miss_wait < 0:
        raise FetchError(ErrorKind.BAD_ARGUMENTS, "--miss-wait must be >= 0")
    if on_miss is OnMiss.PRIVATE and copy_to is None:
        raise FetchError(
            ErrorKind.BAD_ARGUMENTS,
            "--on-miss=private needs --copy-to: a read-only consumer downloads into its own "
            "folder (copy mode), never into the cache",
        )
    if copy_to is not None and _inside(copy_to, layout.root):
        raise FetchError(ErrorKind.BAD_ARGUMENTS, f"--copy-to {copy_to} is inside the cache")
    _check_usage_dir(layout, usage_dir)
    start = clock()
    deadline = start + miss_wait
    delay = _FIRST_POLL
    waited = False
    broken = ""
    while True:
        manifest = read_manifest(layout, key)
        if manifest is not None:
            _check_endpoint(manifest, source=source, key=key)
            problems = entry_problems(layout.entry(key), manifest)
            if not problems:
                served = _serve(layout, manifest, copy_to=copy_to)
                if served is not None:
                    outcome = "waited" if waited else "hit"
                    if waited:
                        served = dataclasses.replace(served, waited_seconds=clock() - start)
                    return _done(
                        served, outcome=outcome, start=start, clock=clock, usage_dir=usage_dir
                    )
                broken = ""  # evicted while we copied: as good as a miss
            else:
                broken = "; ".join(problems[:3])
        remaining = deadline - clock()
        if remaining <= 0:
            break
        if not waited:
            logger.info(
                "%s is not in the read-only cache%s; waiting up to %.0fs for a trusted writer",
                key,
                f" (incomplete: {broken})" if broken else "",
                miss_wait,
            )
        waited = True
        sleep(min(delay, remaining))
        delay = min(delay * 1.5, _MAX_POLL)
    waited_seconds = clock() - start
    if on_miss is OnMiss.WAIT:
        if broken:
            raise FetchError(
                ErrorKind.INTEGRITY,
                f"the shared entry {key} is incomplete ({broken}) and this pod may not repair "
                "it (read-only cache); a trusted writer must move it aside (kserve-cache verify "
                "--quarantine) and fetch it again, or set cache.kserve.io/on-miss: private",
            )
        raise FetchError(
            ErrorKind.WAIT_TIMEOUT,
            f"{key} ({uri}) is not in the shared cache and no trusted writer published it "
            f"within {miss_wait:g}s; this pod reads the cache read-only and does not download "
            "into it: warm the model from a writer namespace (kserve-cache warm), or set "
            "cache.kserve.io/on-miss: private to download a private copy",
        )
    if copy_to is None:  # checked above; keeps the type checker informed
        raise FetchError(ErrorKind.BAD_ARGUMENTS, "--on-miss=private needs --copy-to")
    reason = f"incomplete shared entry: {broken}" if broken else "miss"
    private = _download_private(uri, copy_to, downloader=downloader)
    return _done(
        dataclasses.replace(private, waited_seconds=waited_seconds, reason=reason),
        outcome="private",
        start=start,
        clock=clock,
        usage_dir=usage_dir,
    )


def _inside(path: Path, root: Path) -> bool:
    target, base = path.resolve(), root.resolve()
    return target == base or base in target.parents


def _check_endpoint(manifest: Manifest, *, source: str, key: str) -> None:
    recorded = manifest.endpoint
    if recorded is not None and recorded != source:
        raise FetchError(
            ErrorKind.SOURCE_MISMATCH,
            f"the shared entry {key} was downloaded from {recorded or 'the default endpoint'}, "
            f"this pod's source is {source or 'the default endpoint'}: the same path on "
            "another store is another model; give the two sources their own keys (set "
            "cache.kserve.io/revision, or name the endpoint in a plain env var the webhook sees)",
        )


def _serve(layout: Layout, manifest: Manifest, *, copy_to: Path | None) -> ReadOnlyResult | None:
    entry = layout.entry(manifest.key)
    result = ReadOnlyResult(
        outcome="hit",
        key=manifest.key,
        uri=manifest.uri,
        revision=manifest.revision,
        path=entry,
        bytes=manifest.bytes,
        files=len(manifest.files),
        seconds=0.0,
    )
    if copy_to is None:
        return result
    try:
        copy_manifest_files(entry, copy_to, manifest)
    except EntryVanished as exc:
        logger.warning("the shared entry changed while copying it: %s", exc)
        return None
    except OSError as exc:
        raise _copy_error(exc, copy_to) from exc
    return dataclasses.replace(result, copied_to=copy_to)


def _download_private(uri: str, dest: Path, *, downloader: Downloader) -> ReadOnlyResult:
    """Download into a fresh folder inside `dest` (the pod's own emptyDir), then move its
    contents up: an init container restarted after a failed attempt starts clean."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for old in dest.iterdir():
            if old.name.startswith(_PRIVATE_PREFIX):
                shutil.rmtree(old, ignore_errors=True)
        work = dest / f"{_PRIVATE_PREFIX}{secrets.token_hex(6)}"
        work.mkdir()
    except OSError as exc:
        raise _copy_error(exc, dest) from exc
    logger.info("downloading %s privately into %s (nothing is published)", uri, dest)
    began = time.monotonic()
    try:
        try:
            downloader(uri, work)
        except FetchError:
            raise
        except Exception as exc:
            raise FetchError(ErrorKind.DOWNLOAD_FAILED, f"download of {uri} failed: {exc}") from exc
        seconds = time.monotonic() - began
        try:
            files = seal(work)
        except OSError as exc:
            raise _copy_error(exc, dest) from exc
        if not files:
            raise FetchError(ErrorKind.NOT_FOUND, f"no files found at {uri}")
        try:
            for child in sorted(work.iterdir()):
                target = dest / child.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
                child.rename(target)
        except OSError as exc:
            raise _copy_error(exc, dest) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ReadOnlyResult(
        outcome="private",
        key="",
        uri=uri,
        revision="",
        path=dest,
        bytes=sum(f.size for f in files),
        files=len(files),
        seconds=0.0,
        download_seconds=seconds,
        copied_to=dest,
    )


def _done(
    result: ReadOnlyResult,
    *,
    outcome: str,
    start: float,
    clock: Callable[[], float],
    usage_dir: Path | None,
) -> ReadOnlyResult:
    usage = "not-recorded"
    key = result.key
    if usage_dir is not None and key:
        try:
            record_usage(Layout(usage_dir), key, {"private": "miss"}.get(outcome, outcome))
            usage = "recorded"
        except OSError as exc:
            logger.warning("could not record usage of %s in %s: %s", key, usage_dir, exc)
            usage = "failed"
    return dataclasses.replace(result, outcome=outcome, seconds=clock() - start, usage=usage)


def _copy_error(exc: OSError, dest: Path) -> FetchError:
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return FetchError(ErrorKind.DISK_FULL, f"no space left in {dest} for the model")
    return FetchError(ErrorKind.DOWNLOAD_FAILED, f"writing the model to {dest} failed: {exc}")


# --- gc: usage recorded by read-only consumers ----------------------------------------------


def last_used_elsewhere(usage_dirs: Iterable[Path], key: str) -> float:
    """The latest use of `key` recorded in read-only consumers' usage folders (0 for none)."""
    latest = 0.0
    for folder in usage_dirs:
        usage = read_usage(Layout(folder), key)
        if usage is not None:
            latest = max(latest, usage.last_used)
    return latest


def merge_usage(snapshot: Snapshot, usage_dirs: Iterable[Path]) -> Snapshot:
    """A gc `Snapshot` whose entries' `last_used` also counts the read-only consumers' uses."""
    folders = list(usage_dirs)
    if not folders:
        return snapshot
    entries = tuple(
        dataclasses.replace(e, last_used=max(e.last_used, last_used_elsewhere(folders, e.key)))
        for e in snapshot.entries
    )
    return dataclasses.replace(snapshot, entries=entries)


def keys_mounted(pods: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """Keys that live pods mount by `subPath: models/<key>` from a claim, with or without the
    webhook's status annotation (a pod of another namespace, a hand-written mount): gc keeps
    them as it keeps the annotated ones."""
    keys = set()
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        spec = pod.get("spec") or {}
        claims = {
            v.get("name")
            for v in spec.get("volumes") or ()
            if isinstance(v, Mapping) and v.get("persistentVolumeClaim")
        }
        for container in (*(spec.get("initContainers") or ()), *(spec.get("containers") or ())):
            for mount in (container or {}).get("volumeMounts") or ():
                sub = str(mount.get("subPath") or "").strip("/").split("/")
                shared = mount.get("name") in claims and len(sub) >= 2 and sub[0] == "models"
                if shared and is_valid_key(sub[1]):
                    keys.add(sub[1])
    return frozenset(keys)


# --- the command line (`kserve-cache fetch --read-only`) -------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`--read-only`, `--on-miss`, `--miss-wait`, `--usage-dir` of `kserve-cache fetch`."""
    p.add_argument(
        "--read-only",
        action="store_true",
        help="never write to the cache root: serve a hit, or wait for a trusted writer",
    )
    p.add_argument(
        "--on-miss",
        choices=[m.value for m in OnMiss],
        default=None,
        help="with --read-only, after --miss-wait: fail (wait, the default) or download a "
        "private copy into --copy-to (private)",
    )
    p.add_argument(
        "--miss-wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"with --read-only: seconds to wait for a writer (default {DEFAULT_MISS_WAIT:g})",
    )
    p.add_argument(
        "--usage-dir",
        type=Path,
        default=None,
        help="with --read-only: a writable folder (not on the cache) to record usage in, "
        "read by `gc --usage-dir`; without it usage is not recorded",
    )


def run(
    args: argparse.Namespace,
    *,
    downloader: Downloader,
    source: str,
    emit: Callable[[dict[str, Any]], None],
) -> int:
    """`fetch --read-only`: the result line, or a FetchError for the caller to report."""
    root: Path = args.cache_root
    if not root.is_dir():
        raise FetchError(
            ErrorKind.CACHE_NOT_WRITABLE,
            f"cache root {root} is not a directory: is the cache PVC mounted there?",
        )
    result = serve_read_only(
        Layout(root),
        uri=args.uri,
        key=args.key,
        revision=args.revision,
        endpoint=getattr(args, "endpoint", "") or "",
        source=source,
        copy_to=args.copy_to,
        on_miss=OnMiss(args.on_miss or OnMiss.WAIT.value),
        miss_wait=DEFAULT_MISS_WAIT if args.miss_wait is None else args.miss_wait,
        downloader=downloader,
        usage_dir=args.usage_dir,
    )
    line: dict[str, Any] = {
        "outcome": result.outcome,
        "read_only": True,
        "key": args.key,
        "uri": args.uri,
        "revision": args.revision,
        "bytes": result.bytes,
        "files": result.files,
        "seconds": round(result.seconds, 3),
        "waited_seconds": round(result.waited_seconds, 3),
        "download_seconds": round(result.download_seconds, 3),
        "path": str(result.path),
        "usage": result.usage,
    }
    if result.copied_to is not None:
        line["copied_to"] = str(result.copied_to)
    if result.reason:
        line["reason"] = result.reason
    emit(line)
    return 0


def check_flags(args: argparse.Namespace) -> None:
    """`--on-miss`, `--miss-wait` and `--usage-dir` only mean something with `--read-only`."""
    if not args.read_only:
        given = [
            flag
            for flag, value in (
                ("--on-miss", args.on_miss),
                ("--miss-wait", args.miss_wait),
                ("--usage-dir", args.usage_dir),
            )
            if value is not None
        ]
        if given:
            raise FetchError(
                ErrorKind.BAD_ARGUMENTS, f"{', '.join(given)} only apply with --read-only"
            )
