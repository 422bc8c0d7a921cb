"""Real processes racing on one cache: `gc` evicting while `fetch` starts on the same key, and
two `gc` runs at once. A fetch either hits a whole entry or downloads it again; nothing partial
is ever served or left behind, and the sizes add up."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.ops.helpers import CLI, DAY, build_entry, entry_problems
from webhook.cache.layout import Layout, list_keys, read_manifest
from webhook.keys import cache_key

ROUNDS = 4
# Start gc with, or after the fetchers, so the rename lands at different points of their
# lookup, lease and copy (a fetch process takes about as long to start as gc, more on a busy
# machine).
GC_DELAYS = (0.0, 0.4, 0.8, 1.2)


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(CLI), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".kserve-cache.json"
    }


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """40 files of 64 KiB in two folders: a copy takes long enough for a rename to land in it."""
    src = tmp_path / "src" / "bert"
    for i in range(40):
        path = src / f"shard{i % 2}" / f"part{i:02d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes([i]) * 65536)
    return src


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param("mount", id="mount"),
        pytest.param("copy", id="copy"),
    ],
)
def test_gc_evicting_while_fetch_starts(model: Path, tmp_path: Path, mode: str) -> None:
    layout = Layout(tmp_path / "cache")
    layout.root.mkdir()
    uri = model.as_uri()
    key = cache_key(uri)
    source = tree(model)
    outcomes: list[str] = []
    evictions = failures = 0
    rounds = ROUNDS if mode == "mount" else ROUNDS - 1
    for round_ in range(rounds):
        fetch_args = ["fetch", "--uri", uri, "--key", key, "--cache-root", str(layout.root),
                      "--termination-log", str(tmp_path / f"term{round_}")]  # fmt: skip
        if round_ == 0 or round_ % 2:
            # Make sure an entry is there to evict: the interesting case is a hit that races.
            code, _, err = finish(spawn(*fetch_args))
            assert code == 0, err
        dests = [tmp_path / f"copy{round_}-{i}" for i in range(2)] if mode == "copy" else []
        fetchers = [spawn(*fetch_args, "--copy-to", str(d)) for d in dests]
        fetchers += [spawn(*fetch_args) for _ in range(2 - len(fetchers))]  # lookups only
        time.sleep(GC_DELAYS[round_])
        gc = spawn("gc", "--cache-root", str(layout.root), "--max-bytes", "0", "--grace", "0",
                   "--no-cluster", "--json")  # fmt: skip
        results = [finish(p) for p in fetchers]
        gc_code, gc_out, gc_err = finish(gc)
        assert gc_code == 0, gc_err
        evictions += len(json.loads(gc_out)["outcome"]["evicted"])
        for i, (code, out, err) in enumerate(results):
            if code != 0:
                # The entry went from under a copy: the init container fails with a reason,
                # having served nothing, and the kubelet runs it again, which downloads again.
                line = json.loads(out.strip().splitlines()[-1])
                assert line["outcome"] == "error", line
                assert any(
                    why in err for why in ("No such file or directory", "vanished", "disappearing")
                ), err
                failures += 1
                copy = ["--copy-to", str(dests[i])] if i < len(dests) else []
                code, out, err = finish(spawn(*fetch_args, *copy))
                assert code == 0, err
            line = json.loads(out.strip().splitlines()[-1])
            assert line["outcome"] in ("hit", "miss", "waited"), line
            assert line["bytes"] == 40 * 65536
            outcomes.append(line["outcome"])
        for dest in dests:
            # What the pod got is the whole model, byte for byte.
            assert tree(dest) == source
        if key in list_keys(layout):
            assert entry_problems(layout, key) == []
        assert list(layout.staging.iterdir()) == []
        assert not layout.trash.exists() or list(layout.trash.iterdir()) == []
    assert evictions > 0
    assert "hit" in outcomes
    assert "miss" in outcomes or "waited" in outcomes
    print(f"{rounds} rounds: {evictions} evictions, {failures} copies failed and were retried")


def twelve(layout: Layout) -> dict[int, str]:
    now = time.time()
    return {
        i: build_entry(
            layout, f"m{i}", size=1000 * (i + 1), last_used=now - (i + 1) * DAY,
            created_at=now - 30 * DAY, files=3,
        ).key
        for i in range(12)
    }  # fmt: skip


@pytest.mark.parametrize("round_", range(3))
def test_two_gc_runs_at_once(tmp_path: Path, round_: int) -> None:
    layout = Layout(tmp_path / "cache")
    layout.ensure_dirs()
    keys = twelve(layout)
    old = time.time() - 3600
    stale = layout.staging / f"{keys[0]}.abandoned"
    (stale / "d").mkdir(parents=True)
    (stale / "d" / "f.bin").write_bytes(b"z" * 4096)
    for path in (stale / "d" / "f.bin", stale / "d", stale):
        os.utime(path, (old, old))
    dead = layout.lock(keys[1])
    dead.write_text('{"holder": "gone", "created": 1}')
    os.utime(dead, (old, old))

    args = ["gc", "--cache-root", str(layout.root), "--max-bytes", "50K", "--no-cluster", "--json"]
    first = spawn(*args)
    time.sleep(0.05 * round_)
    second = spawn(*args)
    reports: list[dict[str, Any]] = []
    for proc in (first, second):
        code, out, err = finish(proc)
        assert code == 0, err
        reports.append(json.loads(out)["outcome"])

    # 78000 -> 50000 takes m11, m10 and m9, each exactly once between the two runs.
    evicted = [k for r in reports for k in r["evicted"]]
    assert sorted(evicted) == sorted([keys[9], keys[10], keys[11]])
    assert sum(r["freed_bytes"] for r in reports) == 33000
    assert [k for r in reports for k in r["staging_removed"]] == [stale.name]
    assert len([k for r in reports for k in r["leases_removed"]]) <= 1
    assert not dead.exists()
    assert not stale.exists()
    remaining = sorted(keys[i] for i in range(9))
    assert list_keys(layout) == remaining
    for key in remaining:
        assert entry_problems(layout, key) == []
    manifests = [read_manifest(layout, k) for k in remaining]
    on_disk = sum(
        p.stat().st_size
        for p in layout.models.rglob("*")
        if p.is_file() and p.name != ".kserve-cache.json"
    )
    assert on_disk == sum(m.bytes for m in manifests if m is not None) == 45000
    assert list(layout.trash.iterdir()) == []
