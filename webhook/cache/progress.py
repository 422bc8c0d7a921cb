"""Download progress: plain log lines at a steady interval, and the holder's record on the
volume (`.progress/<key>`) that waiting pods print.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from webhook.cache.layout import Layout, replace_file

DEFAULT_INTERVAL: Final = 10.0


@dataclass(frozen=True)
class Progress:
    """What the holder has downloaded so far: bytes, total when known, rate over the run."""

    key: str
    holder: str
    gen: int
    bytes: int
    total: int | None
    seconds: float
    rate: float  # bytes per second since the download began

    @property
    def eta(self) -> float | None:
        if self.total is None or self.rate <= 0 or self.bytes > self.total:
            return None
        return (self.total - self.bytes) / self.rate

    def line(self) -> str:
        """`1.2 GiB of 4.0 GiB (30%), 55.3 MiB/s, ETA 52s` (no carriage returns: logs)."""
        done = human_bytes(self.bytes)
        if self.total:
            pct = min(100.0, 100.0 * self.bytes / self.total)
            text = f"{done} of {human_bytes(self.total)} ({pct:.0f}%)"
        else:
            text = f"{done} (total unknown)"
        text += f", {human_bytes(self.rate)}/s"
        eta = self.eta
        if eta is not None:
            text += f", ETA {human_duration(eta)}"
        return text


def write_progress(layout: Layout, progress: Progress) -> None:
    """Replace `.progress/<key>` atomically; failures are not errors (it is for people)."""
    with contextlib.suppress(OSError):
        layout.progress.mkdir(exist_ok=True)
        target = layout.progress_file(progress.key)
        data = {**asdict(progress), "updated": time.time()}
        replace_file(target, json.dumps(data, sort_keys=True))


def read_progress(layout: Layout, key: str) -> Progress | None:
    try:
        with layout.progress_file(key).open("rb") as f:
            data = json.loads(f.read())
        return Progress(
            key=str(data["key"]),
            holder=str(data["holder"]),
            gen=int(data["gen"]),
            bytes=int(data["bytes"]),
            total=None if data.get("total") is None else int(data["total"]),
            seconds=float(data["seconds"]),
            rate=float(data["rate"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear_progress(layout: Layout, key: str, *, holder: str) -> None:
    """Remove our own progress record (a newer holder's is left alone)."""
    found = read_progress(layout, key)
    if found is not None and found.holder == holder:
        with contextlib.suppress(OSError):
            layout.progress_file(key).unlink()


def tree_size(path: Path) -> int:
    """Bytes of all files under `path` (a stat each); 0 for a folder that is gone."""
    total = 0
    stack = [path]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                for item in it:
                    with contextlib.suppress(OSError):
                        if item.is_dir(follow_symlinks=False):
                            stack.append(Path(item.path))
                        else:
                            total += item.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return total


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
