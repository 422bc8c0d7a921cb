"""Refresh policies, the shared interval check across processes, and `kserve-cache verify`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cache.conftest import CLI
from webhook.cache.layout import Layout
from webhook.cache.versions import PolicyError, Refresh, claim_check, parse_refresh

from .helpers import write_version

KEY = "llama-0123456789abcdef"
OTHER = "bert-fedcba9876543210"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("never", Refresh("never"), id="never"),
        pytest.param("on-start", Refresh("on-start"), id="on-start"),
        pytest.param("interval=10m", Refresh("interval", 600.0), id="10m"),
        pytest.param("interval=1h30m", Refresh("interval", 5400.0), id="1h30m"),
        pytest.param("interval=1s", Refresh("interval", 1.0), id="1s"),
    ],
)
def test_parse_refresh(text: str, expected: Refresh) -> None:
    assert parse_refresh(text) == expected
    assert parse_refresh(str(expected)) == expected


@pytest.mark.parametrize(
    "text", ["", "always", "interval=", "interval=0s", "interval=10", "interval=-1m", "on-start "]
)
def test_parse_refresh_refuses(text: str) -> None:
    if text.strip() == "on-start":
        assert parse_refresh(text) == Refresh("on-start")
        return
    with pytest.raises(PolicyError, match="not a refresh policy"):
        parse_refresh(text)


def test_claim_once_per_window(layout: Layout) -> None:
    assert claim_check(layout, KEY, interval=60, now=120.0)
    assert not claim_check(layout, KEY, interval=60, now=150.0)
    assert claim_check(layout, OTHER, interval=60, now=150.0)  # per key
    assert claim_check(layout, KEY, interval=60, now=180.0)  # next window
    names = sorted(p.name for p in (layout.root / "versions" / KEY).iterdir())
    assert names == [".check-60-3"]  # the old window's claim is gone


CLAIMER = """
import sys, time
from pathlib import Path
from webhook.cache.layout import Layout
from webhook.cache.versions import claim_check
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
print(claim_check(Layout(Path(sys.argv[1])), "llama-0123456789abcdef", interval=3600))
"""


def test_racing_processes_check_once(layout: Layout) -> None:
    start = time.time() + 1.5
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(layout.root), str(start)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(outputs) == ["False"] * 7 + ["True"]


def _verify(root: Path, *args: str) -> tuple[int, list[dict[str, object]]]:
    proc = subprocess.run(
        [str(CLI), "verify", "--cache-root", str(root), "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, rows


def _flip(path: Path, offset: int = 7) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x20
    path.write_bytes(bytes(data))


def test_verify_finds_a_flipped_byte_and_quarantines(layout: Layout) -> None:
    v = write_version(layout.root, KEY, {"w.bin": b"w" * 5000, "config.json": b"{}"})
    write_version(layout.root, OTHER, {"m.bin": b"m" * 10})
    code, rows = _verify(layout.root)
    assert code == 0
    assert [(r["key"], r["ok"]) for r in rows] == [(OTHER, True), (KEY, True)]

    _flip(v / "w.bin")
    code, rows = _verify(layout.root)  # sizes only: a flipped byte keeps the size
    assert code == 0
    code, rows = _verify(layout.root, "--full")
    assert code == 1
    bad = [r for r in rows if not r["ok"]]
    assert [(r["key"], r["problems"][0]["path"]) for r in bad] == [(KEY, "w.bin")]  # type: ignore[index]
    assert v.exists()  # reported, not moved

    code, rows = _verify(layout.root, "--full", "--key", KEY, "--quarantine")
    assert code == 1
    moved = Path(str(rows[0]["quarantined_to"]))
    assert moved.parent == layout.root / ".quarantine"
    assert (moved / "w.bin").exists()
    assert not v.exists()
    # The ref now dangles: the kubelet refuses it, and fetch treats it as a miss.
    assert layout.entry(KEY).is_symlink()
    assert not layout.entry(KEY).exists()
    code, rows = _verify(layout.root, "--full")
    assert code == 0
    assert [r["key"] for r in rows] == [OTHER]


def test_verify_size_level_finds_truncation_and_a_tampered_manifest(layout: Layout) -> None:
    v = write_version(layout.root, KEY, {"w.bin": b"w" * 5000})
    with (v / "w.bin").open("r+b") as fh:
        fh.truncate(100)
    code, rows = _verify(layout.root)
    assert code == 1
    assert rows[0]["problems"][0]["kind"] == "size"  # type: ignore[index]
    w = write_version(layout.root, OTHER, {"m.bin": b"m" * 10})
    manifest = json.loads((w / ".kserve-cache.json").read_text())
    manifest["digest"] = "sha256:" + "0" * 64
    (w / ".kserve-cache.json").write_text(json.dumps(manifest))
    code, rows = _verify(layout.root, "--key", OTHER)
    assert code == 1
    assert rows[0]["problems"][0]["path"] == ".kserve-cache.json"  # type: ignore[index]


def test_verify_plain_legacy_folder_and_bad_key(layout: Layout) -> None:
    plain = layout.entry(KEY)
    plain.mkdir(parents=True)
    (plain / "w.bin").write_bytes(b"abc")
    manifest = {
        "uri": "s3://m/x", "revision": "", "key": KEY, "bytes": 3, "created_at": 1.0,
        "download_seconds": 0.0, "version": 1, "files": [{"path": "w.bin", "size": 3}],
    }  # fmt: skip
    (plain / ".kserve-cache.json").write_text(json.dumps(manifest))
    code, rows = _verify(layout.root, "--full")
    assert code == 0
    assert rows[0]["version"] == "(plain folder)"
    code, _ = _verify(layout.root, "--key", "NOT A KEY")
    assert code == 2


def test_old_versions_kept_while_a_live_pod_started_on_them(layout: Layout) -> None:
    from webhook.cache.refs import list_versions, read_ref, record_served
    from webhook.cache.versions import evict_old_versions, plan_old_versions

    v1 = write_version(layout.root, KEY, {"w.bin": b"one"})
    record_served(layout, KEY, v1.name, pod="pod-a", now=100.0)
    v2 = write_version(layout.root, KEY, {"w.bin": b"two"})
    record_served(layout, KEY, v2.name, pod="pod-b", now=200.0)
    old = 10_000.0 + v2.stat().st_mtime
    plan = plan_old_versions(
        layout, live_pods=frozenset({"pod-a"}), keys_in_use=frozenset({KEY}), now=old, grace=60
    )
    assert [(p.version, p.action) for p in plan] == [(v1.name, "keep")]
    assert "pod-a" in plan[0].reason
    assert evict_old_versions(layout, plan) == []
    # pod-a is gone: v1 goes, the current v2 never does.
    plan = plan_old_versions(
        layout, live_pods=frozenset({"pod-b"}), keys_in_use=frozenset({KEY}), now=old, grace=60
    )
    assert [(p.version, p.action) for p in plan] == [(v1.name, "evict")]
    assert [e.version for e in evict_old_versions(layout, plan)] == [v1.name]
    assert list_versions(layout, KEY) == [v2.name]
    assert read_ref(layout, KEY).version == v2.name
    # Within the grace period, and without a cluster check, only time protects.
    v3 = write_version(layout.root, KEY, {"w.bin": b"three"})
    plan = plan_old_versions(
        layout, live_pods=None, keys_in_use=None, now=v3.stat().st_mtime + 1, grace=60
    )
    assert [(p.version, p.action) for p in plan] == [(v2.name, "keep")]
