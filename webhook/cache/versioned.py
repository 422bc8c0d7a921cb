"""Fetch with versions: refresh policy, digest pinning and the hit's integrity check on top of
the single-flight protocol of `webhook.cache.fetch`.

A hit asks the source for its fingerprint when the policy says so (`on-start`: every start;
`interval=D`: the first start of each interval window; `never`: not at all) and serves the
current version when it is unchanged or the source cannot be asked (with a warning). A
changed source is downloaded under the same lease into `versions/<key>/<id>/`, and the ref
`models/<key>` is then swapped to it; pods that started earlier keep their version.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webhook.cache.fetch import (
    Downloader,
    ErrorKind,
    FetchError,
    FetchResult,
    PhaseHook,
    Settings,
    acquire_or_wait,
    check_hit,
    check_key,
    check_root,
    clean_stale,
    os_error,
)
from webhook.cache.fingerprint import (
    DEFAULT_TIMEOUT,
    Fingerprint,
    FingerprintResult,
    Unavailable,
    fingerprint_scheme,
    fingerprint_to_dict,
    source_fingerprint,
)
from webhook.cache.integrity import describe, parse_digest, verify_full, verify_sizes
from webhook.cache.layout import MANIFEST_NAME, Layout, Manifest, record_usage
from webhook.cache.refs import (
    RefError,
    install_version,
    record_served,
    swap_ref,
    symlinks_work,
    version_id,
)
from webhook.cache.versions import (
    Refresh,
    VersionInfo,
    all_versions,
    claim_check,
    current_version,
    quarantine,
)
from webhook.keys import source_endpoint

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """What `--refresh`, `--digest` and `--verify` asked for."""

    refresh: Refresh = field(default_factory=lambda: Refresh("never"))
    digest: str = ""
    verify: str = "size"
    copy_mode: bool = False
    env: Mapping[str, str] | None = None
    check_timeout: float = DEFAULT_TIMEOUT
    symlinks: bool | None = None  # None: from the capability probe's record, else tried now
    pod: str = ""


@dataclass(frozen=True)
class Served:
    """A fetch result and the version it served (resolved once: a later swap does not move it)."""

    result: FetchResult
    path: Path
    version: str
    digest: str
    fingerprint: dict[str, Any] | None
    created_at: float | None
    check: str
    warnings: tuple[str, ...] = ()

    def to_dict(self, *, now: float | None = None) -> dict[str, Any]:
        clock = time.time() if now is None else now
        fp = self.fingerprint or {}
        return {
            "id": self.version or "(plain folder)",
            "digest": self.digest,
            "fingerprint": fp.get("value", ""),
            "commit": fp.get("commit", ""),
            "created_at": self.created_at,
            "age_seconds": None if self.created_at is None else round(clock - self.created_at, 1),
            "check": self.check,
        }


def fetch_versioned(
    layout: Layout,
    *,
    uri: str,
    key: str,
    revision: str = "",
    downloader: Downloader,
    options: Options,
    settings: Settings | None = None,
    endpoint: str = "",
    source: str | None = None,
    on_phase: PhaseHook | None = None,
) -> Served:
    """A hit, a refresh, or a miss, and the version served; see the module docstring."""
    check_key(uri=uri, key=key, revision=revision, endpoint=endpoint)
    settings = settings or Settings()
    settings.check()
    check_root(layout)
    pin = _pin(options.digest)
    env = os.environ if options.env is None else options.env
    own = source_endpoint(uri, env) if source is None else source
    start = time.monotonic()
    warnings: list[str] = []
    versioned = options.refresh.mode != "never"
    if versioned and not _symlinks(layout, options):
        raise FetchError(
            ErrorKind.UNSAFE_VOLUME,
            f"refresh={options.refresh} needs symbolic links on the cache volume {layout.root} "
            "(the capability probe's symlink check failed): versions cannot be swapped "
            "atomically there. Use refresh=never (cache.kserve.io/refresh: never) on this volume",
        )

    ref, current = current_version(layout, key)
    due = _due(layout, key, options.refresh, current is not None, warnings)
    fp: FingerprintResult = None
    if due:
        fp = source_fingerprint(uri, env=env, timeout=options.check_timeout)
    check = "not-asked" if current is not None and not due else "miss"
    changed = False
    if current is not None and due:
        check, changed = _compare(uri, fp, current, warnings)
        if changed:
            logger.info("%s changed at the source (%s): downloading a new version", key, check)
    if current is not None and not changed:
        damage = verify_sizes(current.path, current.files)
        if not damage:
            return _serve(layout, current, result=_hit(layout, current, start), check=check,
                          pin=pin, options=options, own=own, warnings=warnings)  # fmt: skip
        # Incomplete (a file missing or of another size): a miss, repaired under the lease.
        logger.warning("%s does not match its manifest (%s): downloading it again",
                       key, describe(damage))  # fmt: skip

    # A miss, or a new version: one download for everyone, under the lease.
    target = fp.value if isinstance(fp, Fingerprint) else ""
    extra = {"fingerprint": fingerprint_to_dict(fp) if isinstance(fp, Fingerprint) else None}
    pinned = fp.pinned_uri if isinstance(fp, Fingerprint) and fp.pinned_uri else uri
    try:
        layout.ensure_dirs()
        clean_stale(layout, ttl=settings.lease_ttl)
    except OSError as exc:
        raise os_error(exc, layout, "preparing the cache volume") from exc

    def hit(lay: Layout, k: str, *, source: str) -> Manifest | None:
        manifest = check_hit(lay, k, source=source)
        if manifest is None:
            return None
        _, info = current_version(lay, k)
        if target and (info is None or info.fingerprint != target):
            return None  # still the old version: ours to replace
        return manifest

    def publish(lay: Layout, k: str, staging: Path, *, source: str | None = None) -> bool:
        del source  # the endpoint is in the staged manifest already
        return _publish_version(lay, k, staging)

    # Once a key has versions, every publish is a version (a plain folder cannot replace a ref).
    as_version = versioned or ref.kind in ("link", "broken")
    result = acquire_or_wait(
        layout, key=key, uri=uri, revision=revision, source=own,
        downloader=_Pinned(downloader, pinned), settings=settings, start=start,
        on_phase=on_phase, hit=hit if as_version else None,
        publisher=publish if as_version else None, manifest_extra=extra,
    )  # fmt: skip
    _, served = current_version(layout, key)
    if served is None:
        raise FetchError(ErrorKind.DOWNLOAD_FAILED, f"{key} vanished right after publishing")
    if result.outcome == "miss" and check == "miss" and isinstance(fp, Unavailable):
        warnings.append(f"source fingerprint unavailable ({fp.reason}): refresh cannot "
                        "compare this version later until a check succeeds")  # fmt: skip
    fresh = result.outcome == "miss"
    return _serve(layout, served, result=result, check=check, pin=pin,
                  options=options, own=own, warnings=warnings, fresh=fresh)  # fmt: skip


def _pin(text: str) -> str:
    if not text:
        return ""
    try:
        return parse_digest(text)
    except ValueError as exc:
        raise FetchError(ErrorKind.BAD_ARGUMENTS, str(exc)) from exc


def _symlinks(layout: Layout, options: Options) -> bool:
    if options.symlinks is not None:
        return options.symlinks
    try:
        from webhook.cache.probe import read_record

        report = read_record(layout.root)
    except ImportError:  # pragma: no cover - the probe ships with this package
        report = None
    check = report.check("symlink") if report is not None else None
    return check.ok if check is not None else symlinks_work(layout.root)


def _due(layout: Layout, key: str, refresh: Refresh, present: bool, warnings: list[str]) -> bool:
    """Whether this start asks the source. A miss always does (to record the fingerprint),
    and counts as the check of its interval window."""
    if not present:
        if refresh.mode == "interval":
            try:
                claim_check(layout, key, interval=refresh.interval)
            except OSError as exc:
                logger.debug("cannot claim the interval check of %s: %s", key, exc)
        return True
    if refresh.mode == "on-start":
        return True
    if refresh.mode == "interval":
        try:
            return claim_check(layout, key, interval=refresh.interval)
        except OSError as exc:
            warnings.append(f"cannot claim the interval check on the volume ({exc}): not asked")
    return False


def _compare(
    uri: str, fp: FingerprintResult, current: VersionInfo, warnings: list[str]
) -> tuple[str, bool]:
    """(what the check found, whether a new version is needed)."""
    if fp is None:
        scheme = fingerprint_scheme(uri) or uri.split(":", 1)[0]
        warnings.append(f"{scheme} sources have no cheap fingerprint: serving the cached version "
                        "without asking the source (as refresh=never)")  # fmt: skip
        return "no-fingerprint", False
    if isinstance(fp, Unavailable):
        warnings.append(f"cannot ask the source ({fp.reason}: {fp.message}): serving the cached "
                        f"version {current.version or '(plain folder)'}")  # fmt: skip
        return f"unavailable:{fp.reason}", False
    if fp.value == current.fingerprint:
        return "unchanged", False
    return "changed", True


def _hit(layout: Layout, info: VersionInfo, start: float) -> FetchResult:
    manifest = info.manifest or {}
    try:
        record_usage(layout, info.key, "hit")
    except OSError as exc:
        logger.warning("could not record usage of %s: %s", info.key, exc)
    return FetchResult(
        outcome="hit",
        key=info.key,
        uri=str(manifest.get("uri", "")),
        revision=str(manifest.get("revision", "")),
        path=info.path,
        bytes=int(manifest.get("bytes", 0)),
        files=len(info.files),
        seconds=time.monotonic() - start,
    )


def _serve(
    layout: Layout,
    info: VersionInfo,
    *,
    result: FetchResult,
    check: str,
    pin: str,
    options: Options,
    own: str,
    warnings: list[str],
    fresh: bool = False,
) -> Served:
    """The last word before exit 0: endpoint, integrity at the asked level, the pin."""
    manifest = info.manifest or {}
    recorded = manifest.get("endpoint")
    if recorded is not None and recorded != own:
        raise FetchError(
            ErrorKind.SOURCE_MISMATCH,
            f"cache entry {info.key} was downloaded from {recorded or 'the default endpoint'} but "
            f"this pod's source is {own or 'the default endpoint'}: refusing to serve it",
        )
    if pin and info.digest != pin:
        info = _pinned_elsewhere(layout, info, pin, options)
    full = options.verify == "full" and not fresh  # a fresh download was hashed just now
    if full and not all(f.sha256 for f in info.files):
        # An entry from before hashing cannot be re-hashed against anything: sizes only.
        warnings.append("this entry predates per-file hashes: --verify=full checked sizes only")
        full = False
    problems = verify_full(info.path, info.files) if full else verify_sizes(info.path, info.files)
    if problems:
        raise FetchError(
            ErrorKind.INTEGRITY,
            f"version {info.version or '(plain folder)'} of {info.key} does not match its "
            f"manifest ({describe(problems)}): refusing to serve it; `kserve-cache verify "
            f"--key {info.key} --full --quarantine` moves it aside so the next start downloads "
            "it again",
        )
    pod = options.pod or os.environ.get("POD_NAME", "") or socket.gethostname()
    if info.version:
        try:
            record_served(layout, info.key, info.version, pod=pod)
        except OSError as exc:
            logger.warning(
                "could not record the version %s served to %s: %s", info.version, pod, exc
            )
    for line in warnings:
        logger.warning("%s: %s", info.key, line)
    fingerprint = manifest.get("fingerprint")
    return Served(
        result=dataclasses.replace(result, path=info.path),
        path=info.path,
        version=info.version,
        digest=info.digest,
        fingerprint=fingerprint if isinstance(fingerprint, dict) else None,
        created_at=info.created_at,
        check=check,
        warnings=tuple(warnings),
    )


def _pinned_elsewhere(layout: Layout, info: VersionInfo, pin: str, options: Options) -> VersionInfo:
    """Copy mode may serve an older version that has the pinned digest; mount mode cannot
    (the pod mounts the ref, which names the current version): fail closed."""
    older = [v for v in all_versions(layout, info.key) if v.digest == pin and v.manifest]
    if older and options.copy_mode:
        logger.info(
            "serving the pinned version %s of %s (not the current one)", older[0].version, info.key
        )
        return older[0]
    where = (
        f"version {older[0].version} in the cache has it, but mount mode serves only the "
        "current version (use serving-mode copy, or update the pin)"
        if older
        else "no version in the cache has it"
    )
    raise FetchError(
        ErrorKind.INTEGRITY,
        f"pinned digest {pin} does not match {info.key}: the cache serves "
        f"{info.digest or 'a version without a digest'}; {where}",
    )


def _publish_version(layout: Layout, key: str, staging: Path) -> bool:
    """Holding the lease: move a sealed staging folder to `versions/<key>/<id>`, swap the ref.

    The same content may be there already (the source went back to an earlier state): it is
    reused, unless it was damaged meanwhile, then it is quarantined and replaced.
    """
    import json

    from webhook.cache.refs import version_dir
    from webhook.cache.versions import read_version

    data = json.loads((staging / MANIFEST_NAME).read_text(encoding="utf-8"))
    vid = version_id(str(data.get("digest", "")))
    try:
        existing_path = version_dir(layout, key, vid)
        if existing_path.exists():
            existing = read_version(key, existing_path, version=vid, current=False)
            if existing.manifest is None or verify_sizes(existing_path, existing.files):
                quarantine(layout, existing)
        install_version(layout, key, staging, vid)
        swap_ref(layout, key, vid)
    except RefError as exc:
        raise FetchError(ErrorKind.UNSAFE_VOLUME, str(exc)) from exc
    except OSError as exc:
        raise os_error(exc, layout, "publishing the version") from exc
    return True


def read_manifest_at(path: Path, key: str) -> Manifest | None:
    """The manifest inside a resolved version folder (None when unreadable or another key's)."""
    try:
        manifest = Manifest.from_json((path / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if manifest.key == key else None


class _Pinned:
    """The downloader, given the URI that names exactly the fingerprinted state (hf commit)."""

    def __init__(self, inner: Downloader, uri: str) -> None:
        self._inner = inner
        self._uri = uri

    def __call__(self, uri: str, out_dir: Path) -> None:
        if self._uri != uri:
            logger.info(
                "downloading %s as %s (the commit its revision resolves to)", uri, self._uri
            )
        self._inner(self._uri, out_dir)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
