"""The holder's watchdog, progress lines and SIGTERM, with real `kserve-cache` processes: a
stalled HTTP server, killed workers of KServe's S3 process pool, a pod deleted mid-download."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from webhook.cache.download import descendants
from webhook.cache.layout import Layout
from webhook.cache.lease import read_holder
from webhook.cache.progress import tree_size
from webhook.keys import cache_key

from .conftest import BUCKET, CLI, S3, fetch_args, tree
from .servers import FileServer


def sha(files: Mapping[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(body).hexdigest() for name, body in files.items()}


def served(root: Path, key: str) -> dict[str, str]:
    files = tree(root / "models" / key)
    files.pop(".kserve-cache.json", None)
    return sha(files)


def spawn(
    args: list[str], *, env: Mapping[str, str] | None = None, log: Path
) -> subprocess.Popen[str]:
    with log.open("w") as err:
        return subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=dict(env) if env is not None else None,
        )


def finish(proc: subprocess.Popen[str], log: Path, timeout: float = 120) -> tuple[int, Any, str]:
    out, _ = proc.communicate(timeout=timeout)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out  # exactly one result line, whatever happened
    return proc.returncode, json.loads(lines[0]), log.read_text()


def wait_for(predicate: Callable[[], object], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def downloaders_of(root: Path) -> list[int]:
    """Live processes running a download into this cache root (zombies have no cmdline)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"webhook.cache.download" in cmdline and str(root).encode() in cmdline:
            found.append(int(proc.name))
    return found


def parent_of(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return -1
    return int(stat[stat.rfind(b")") + 2 :].split()[1])


def staged(root: Path) -> int:
    return tree_size(root / ".staging")


def assert_clean(root: Path, key: str) -> None:
    layout = Layout(root)
    assert read_holder(layout, key) is None
    assert list(layout.staging.iterdir()) == []
    assert not layout.trash.exists() or list(layout.trash.iterdir()) == []
    wait_for(lambda: downloaders_of(root) == [], timeout=10)


def test_stalled_http_source_is_aborted_and_a_waiter_takes_over_at_once(
    http_server: FileServer, tmp_path: Path
) -> None:
    body = os.urandom(1_500_000)
    path = "/stall/model.bin"
    http_server.files[path] = body
    http_server.hang[path] = 1  # the first GET sends 64 KiB, then nothing
    uri = http_server.url(path)
    key = cache_key(uri)
    root = tmp_path / "cache"
    root.mkdir()
    common = ("--lease-ttl", "30", "--termination-log", str(tmp_path / "t"))
    holder = spawn(fetch_args(uri, root, extra=(*common, "--stall-timeout", "3")),
                   log=tmp_path / "a.log")  # fmt: skip
    wait_for(lambda: http_server.gets.get(path, 0) >= 1)  # its GET is the one that hangs
    # The waiter gives up long before a silent lease (30 s TTL) could be taken over: it can
    # only succeed if the stalled holder releases its lease when it aborts.
    waiter = spawn(fetch_args(uri, root, extra=(*common, "--wait-timeout", "20")),
                   log=tmp_path / "b.log")  # fmt: skip

    code, line, err = finish(holder, tmp_path / "a.log")
    assert code == 10, err
    assert (line["outcome"], line["error"], line["exit_code"]) == ("error", "stalled", 10)
    assert "made no progress for 3s" in line["message"]
    code, line, err = finish(waiter, tmp_path / "b.log")
    assert code == 0, err
    assert line["outcome"] == "miss"  # it took the lease over and downloaded
    assert served(root, key) == sha({"model.bin": body})
    assert http_server.gets[path] == 2
    assert_clean(root, key)


def throttle(s3: S3, seconds: float) -> None:
    httpx.post(f"{s3.endpoint}/_throttle", content=str(seconds).encode(), timeout=10)


def test_killed_workers_of_the_s3_pool_do_not_hang_the_fetch(s3: S3, tmp_path: Path) -> None:
    """kserve-storage downloads S3 objects with a multiprocessing pool; a worker killed (OOM)
    loses its task and the pool waits forever. The watchdog must get the holder out."""
    uri = f"s3://{BUCKET}/llama"
    key = cache_key(uri)
    root = tmp_path / "cache"
    root.mkdir()
    throttle(s3, 0.5)  # about 6 s for the 700 kB object: killed in the middle
    try:
        holder = spawn(
            fetch_args(uri, root, extra=("--stall-timeout", "8", "--termination-log", "/dev/null")),
            env=s3.env(),
            log=tmp_path / "a.log",
        )
        found: dict[str, list[int]] = {}

        def pool_busy() -> bool:
            download = [p for p in downloaders_of(root) if parent_of(p) == holder.pid]
            workers = descendants(download[0]) if download else []
            found["workers"] = workers
            return staged(root) > 0 and bool(workers)

        wait_for(pool_busy)
        workers = found["workers"]
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        code, line, err = finish(holder, tmp_path / "a.log")
    finally:
        throttle(s3, 0)
    assert code == 10, err
    assert line["error"] == "stalled"
    assert_clean(root, key)  # the download process and its pool are gone too

    again = subprocess.run(
        fetch_args(uri, root, extra=("--termination-log", "/dev/null")),
        env=s3.env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["outcome"] == "miss"
    expected = {
        k.removeprefix("llama/"): v for k, v in s3.objects.items() if k.startswith("llama/")
    }
    assert served(root, key) == sha(expected)


PROGRESS = re.compile(
    r"downloading (?P<key>\S+): (?P<done>[\d.]+ (B|KiB|MiB)) "
    r"(\(total unknown\)|of (?P<total>[\d.]+ (B|KiB|MiB)) \(\d+%\)), [\d.]+ (B|KiB|MiB)/s"
    r"(, ETA \d+[smh])?$"
)


def test_progress_lines_of_the_holder_and_of_a_waiter(
    http_server: FileServer, tmp_path: Path
) -> None:
    body = os.urandom(1_000_000)
    path = "/progress/model.bin"
    http_server.files[path] = body
    http_server.throttle[path] = 0.15  # 16 chunks: about 2.4 s
    uri = http_server.url(path)
    key = cache_key(uri)
    root = tmp_path / "cache"
    root.mkdir()
    extra = ("--progress-interval", "0.3", "--termination-log", "/dev/null")
    try:
        holder = spawn(fetch_args(uri, root, extra=extra), log=tmp_path / "a.log")
        wait_for(lambda: read_holder(Layout(root), key) is not None)
        waiter = spawn(fetch_args(uri, root, extra=extra), log=tmp_path / "b.log")
        code_a, line_a, err_a = finish(holder, tmp_path / "a.log")
        code_b, line_b, err_b = finish(waiter, tmp_path / "b.log")
    finally:
        http_server.throttle.pop(path, None)
    assert (code_a, code_b) == (0, 0), (err_a, err_b)
    assert (line_a["outcome"], line_b["outcome"]) == ("miss", "waited")
    assert "\r" not in err_a + err_b  # logs are not a terminal
    lines = [m for ln in err_a.splitlines() if (m := PROGRESS.search(ln))]
    assert lines, err_a
    assert {m["key"] for m in lines} == {key}
    waiting = [ln for ln in err_b.splitlines() if f"waiting for {key}: lease held by" in ln]
    assert any("holder's progress: " in ln and "/s" in ln for ln in waiting), err_b
    assert served(root, key) == sha({"model.bin": body})
    assert not (root / ".progress" / key).exists()  # the holder removed its record


def test_progress_of_an_s3_download_knows_its_total(s3: S3, tmp_path: Path) -> None:
    uri = f"s3://{BUCKET}/llama"
    root = tmp_path / "cache"
    root.mkdir()
    throttle(s3, 0.15)
    try:
        holder = spawn(fetch_args(uri, root, extra=("--progress-interval", "0.3",
                                                    "--termination-log", "/dev/null")),
                       env=s3.env(), log=tmp_path / "a.log")  # fmt: skip
        code, _, err = finish(holder, tmp_path / "a.log")
    finally:
        throttle(s3, 0)
    assert code == 0, err
    totals = {m["total"] for ln in err.splitlines() if (m := PROGRESS.search(ln))}
    total = sum(len(v) for k, v in s3.objects.items() if k.startswith("llama/"))
    assert f"{total / 1024:.1f} KiB" in totals, err


@pytest.mark.parametrize("command", ["fetch", "warm"])
def test_sigterm_mid_download_cleans_up_and_prints_the_result_line(
    http_server: FileServer, tmp_path: Path, command: str
) -> None:
    body = os.urandom(400_000)
    path = f"/term-{command}/model.bin"
    http_server.files[path] = body
    http_server.hang[path] = 1
    uri = http_server.url(path)
    key = cache_key(uri)
    root = tmp_path / "cache"
    root.mkdir()
    term = tmp_path / "termination.log"
    if command == "fetch":
        args = fetch_args(uri, root, extra=("--termination-log", str(term)))
    else:
        args = [str(CLI), "warm", "--uri", uri, "--cache-root", str(root)]
    proc = spawn(args, log=tmp_path / "a.log")
    wait_for(lambda: staged(root) > 0)
    proc.send_signal(signal.SIGTERM)
    code, line, err = finish(proc, tmp_path / "a.log")
    assert code == 143, err
    assert (line["outcome"], line["error"], line["exit_code"]) == ("error", "terminated", 143)
    assert "SIGTERM" in line["message"]
    if command == "fetch":
        assert "terminated" in term.read_text()
    assert not (root / "models" / key).exists()
    assert_clean(root, key)
    # The next pod does not wait for a TTL: the lease was released.
    nxt = subprocess.run(
        fetch_args(uri, root, extra=("--wait-timeout", "20", "--termination-log", "/dev/null")),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert nxt.returncode == 0, nxt.stderr
    assert json.loads(nxt.stdout)["outcome"] == "miss"
    assert served(root, key) == sha({"model.bin": body})
