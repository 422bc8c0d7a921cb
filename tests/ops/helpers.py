"""Builders for real cache volumes (entries of chosen sizes and last use) and checks of them."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webhook.cache.layout import FileEntry, Layout, Manifest, read_manifest, record_usage
from webhook.keys import cache_key

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / ".venv" / "bin" / "kserve-cache"
DAY = 86400.0


@dataclass(frozen=True)
class Built:
    key: str
    uri: str
    bytes: int


def build_entry(
    layout: Layout,
    name: str,
    *,
    size: int,
    last_used: float | None,
    created_at: float,
    files: int = 2,
) -> Built:
    """Publish `models/<key>` with `files` files summing to `size` bytes and a manifest; stamp
    its last use with a usage record (none when `last_used` is None)."""
    uri = f"s3://bucket/{name}"
    key = cache_key(uri)
    entry = layout.entry(key)
    (entry / "sub").mkdir(parents=True)
    sizes = [size // files] * files
    sizes[-1] += size - sum(sizes)
    entries = []
    for i, n in enumerate(sizes):
        rel = f"sub/part{i}.bin" if i % 2 else f"part{i}.bin"
        (entry / rel).write_bytes(bytes([i % 251]) * n)
        entries.append(FileEntry(rel, n))
    manifest = Manifest(
        uri=uri,
        revision="",
        key=key,
        files=tuple(entries),
        bytes=size,
        created_at=created_at,
        download_seconds=0.1,
    )
    (entry / ".kserve-cache.json").write_text(manifest.to_json())
    if last_used is not None:
        record_usage(layout, key, "hit", now=last_used)
    return Built(key, uri, size)


def before_rename(action: Callable[[], object]) -> Callable[[], float]:
    """A clock for `execute()` that runs `action` when it is read the second time: the
    executor asks the time again right before its rename aside, after its last look at the
    plan, so `action` is what another node does at that worst moment."""
    reads = 0

    def clock() -> float:
        nonlocal reads
        reads += 1
        if reads == 2:
            action()
        return time.time()

    return clock


def entry_problems(layout: Layout, key: str) -> list[str]:
    """What differs between a published entry and its manifest (empty: whole)."""
    manifest = read_manifest(layout, key)
    if manifest is None:
        return [f"{key}: no valid manifest"]
    return folder_problems(layout.entry(key), manifest)


def folder_problems(folder: Path, manifest: Manifest) -> list[str]:
    problems = []
    listed = {f.path: f.size for f in manifest.files}
    found = {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".kserve-cache.json"
    }
    if listed != found:
        problems.append(f"{folder}: files {sorted(found.items())} != {sorted(listed.items())}")
    if sum(listed.values()) != manifest.bytes:
        problems.append(f"{folder}: manifest bytes {manifest.bytes} != sum of its files")
    return problems


PROBE_ARTIFACTS = (".probe", ".kserve-cache-probe.json")
"""The capability probe's scratch folder and record (written once per volume, by design)."""


def tree_state(root: Path) -> dict[str, tuple[int, float]]:
    """Every file under root with size and mtime, and every folder: equal before and after
    means nothing changed. Folder mtimes are left out: reading the volume's clock creates and
    removes a probe file in `.locks/`, which changes nothing else."""
    return {
        p.relative_to(root).as_posix(): (
            (0, 0.0)
            if p.is_dir() and not p.is_symlink()
            else (p.lstat().st_size, p.lstat().st_mtime)
        )
        for p in sorted(root.rglob("*"))
        if p.relative_to(root).parts[0] not in PROBE_ARTIFACTS
    }


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Any:
    return subprocess.run(
        [str(CLI), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else dict(os.environ),
        check=False,
    )


def gc_json(*args: str) -> tuple[int, dict[str, Any], str]:
    proc = run_cli("gc", "--json", *args)
    data = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, data, proc.stderr


def pod(name: str, key: str, phase: str) -> dict[str, object]:
    """A pod in team-a that our webhook mutated for cache `key`, in `phase`."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "annotations": {
                "cache.kserve.io/status": json.dumps(
                    {"key": key, "pvc": "models", "mode": "mount", "version": "0.1.0"}
                )
            },
        },
        "spec": {"containers": [{"name": "kserve-container", "image": "x"}]},
        "status": {"phase": phase},
    }
