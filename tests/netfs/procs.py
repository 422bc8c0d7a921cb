"""Real `kserve-cache fetch`/`gc` processes for the filesystem tests, run in the background
so a test can pause, stop, kill or race them, and what they served compared by sha256."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.cache.conftest import CLI, Run, fetch_args

PAUSE_ENV = "KSERVE_CACHE_TEST_PAUSE_AT"
PAUSE_LINE = "pausing"  # what the PAUSE hook logs when it starts to sleep
STARTED: list[Proc] = []  # every process spawned, so the test teardown can reap them


@dataclass
class Proc:
    """A background process whose stderr is collected by a thread (no pipe can fill up)."""

    popen: subprocess.Popen[str]
    termination: Path | None = None
    lines: list[str] = field(default_factory=list)
    _seen: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()
        with self._seen:
            self.lines.append("")  # EOF marker
            self._seen.notify_all()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 60) -> bool:
        """Block until a stderr line contains text; False if the process ended first."""
        end = time.monotonic() + timeout
        with self._seen:
            while True:
                if any(text in ln for ln in self.lines):
                    return True
                if self.lines and self.lines[-1] == "":
                    return False
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {text!r} from pid {self.pid}: {self.stderr[-2000:]}")
                self._seen.wait(left)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def finish(self, timeout: float = 90) -> Run:
        """Wait for the end and parse the one JSON line; kills the process on timeout."""
        try:
            stdout, _ = self.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.popen.communicate()
            raise
        lines = [ln for ln in stdout.splitlines() if ln.strip()]
        try:
            result = json.loads(lines[-1]) if lines else {}
        except ValueError:  # `gc --json` prints one indented document
            result = json.loads(stdout)
        term = ""
        if self.termination is not None and self.termination.exists():
            term = self.termination.read_text(encoding="utf-8")
        return Run(self.popen.returncode, result, self.stderr, term)

    def kill(self) -> None:
        if self.popen.returncode is not None and self.popen.stdout is None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
            self.popen.communicate(timeout=30)
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError, ValueError):
                    pipe.close()


def reap_all() -> None:
    """Kill and reap every process a test left running (a failed test, a hung one)."""
    while STARTED:
        STARTED.pop().kill()


def spawn(args: Sequence[str], *, env: Mapping[str, str], termination: Path | None = None) -> Proc:
    popen = subprocess.Popen(
        list(args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env),
    )
    proc = Proc(popen, termination)
    STARTED.append(proc)
    return proc


def spawn_fetch(
    uri: str,
    root: Path,
    *,
    env: Mapping[str, str],
    pause: str | None = None,
    extra: Sequence[str] = (),
    revision: str = "",
) -> Proc:
    """Start `kserve-cache fetch`; `pause` is `<phase>=<seconds>` for the PAUSE test hook."""
    term = Path(f"/tmp/kserve-cache-term-{os.getpid()}-{os.urandom(4).hex()}.log")
    env = dict(env)
    env.pop(PAUSE_ENV, None)
    if pause:
        env[PAUSE_ENV] = pause
    args = fetch_args(uri, root, revision=revision, extra=tuple(extra))
    return spawn([*args, "--termination-log", str(term)], env=env, termination=term)


def gc_args(root: Path, *extra: str) -> list[str]:
    return [str(CLI), "gc", "--cache-root", str(root), *extra]


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every regular file under folder (manifest excluded), by relative path."""
    out: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name != ".kserve-cache.json":
            out[path.relative_to(folder).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def expected(objects: Mapping[str, bytes], prefix: str) -> dict[str, str]:
    """What a download of s3://bucket/<prefix> must serve: the objects under it, by sha256."""
    base = prefix.rstrip("/") + "/"
    return {
        name.removeprefix(base): hashlib.sha256(body).hexdigest()
        for name, body in objects.items()
        if name.startswith(base)
    }


def children(pid: int) -> list[int]:
    """Direct child processes of pid (from /proc)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            kids += [int(x) for x in (task / "children").read_text().split()]
    return kids


def leaves(pid: int) -> list[int]:
    """The descendants of pid that have no children: the workers of a process pool."""
    kids = children(pid)
    if not kids:
        return []
    out: list[int] = []
    for kid in kids:
        out += leaves(kid) or [kid]
    return out
