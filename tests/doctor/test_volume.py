"""`kserve-cache doctor --cache-root`: a real folder, the running uid/gids, real statvfs figures
and a real (small) measurement; every verdict also checked failing from its facts."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from webhook import doctor
from webhook.cli import main
from webhook.doctor import RootFacts, SpaceFacts, SpeedFacts, Status


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, dict[str, Any]]]:
    code = main(["doctor", "-o", "json", *argv])
    out = json.loads(capsys.readouterr().out)
    from tests.doctor.test_cluster import links_resolve

    links_resolve(out["checks"])
    return code, {c["name"]: c for c in out["checks"]}


def test_a_writable_root_passes_and_leaves_nothing_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    code, checks = run(
        capsys, "--cache-root", str(root), "--bench-bytes", "4Mi", "--metadata-files", "10"
    )
    for name in ("root-permissions", "free-space", "free-inodes", "throughput", "metadata-latency"):
        assert checks[name]["status"] == "ok", checks[name]
    assert "capability-probe" in checks
    assert checks["capability-probe"]["status"] != "fail", checks["capability-probe"]
    assert code == 0
    assert "4 MiB, fsync'd" in checks["throughput"]["detail"]
    assert "(10 files)" in checks["metadata-latency"]["detail"]
    st = os.statvfs(root)
    free = st.f_bavail * st.f_frsize
    assert doctor._human(free).split()[1] in checks["free-space"]["detail"]
    # the scratch folder is gone (the probe's record may stay: fetch reads it)
    assert not (root / ".doctor").exists()


def test_a_missing_root_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, checks = run(capsys, "--cache-root", str(tmp_path / "nope"))
    assert code == 1
    assert checks["root-permissions"]["status"] == "fail"
    assert "is not a directory" in checks["root-permissions"]["detail"]


def test_read_only_mode_writes_nothing_and_reads_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.ops.helpers import build_entry
    from webhook.cache.layout import Layout

    root = tmp_path / "cache"
    root.mkdir()
    build_entry(Layout(root), "iris", size=300_000, last_used=None, created_at=0.0)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    code, checks = run(capsys, "--cache-root", str(root), "--read-only", "--bench-bytes", "1Mi")
    assert code == 0
    assert "read-only consumer" in checks["root-permissions"]["detail"]
    assert "writes not measured" in checks["throughput"]["detail"]
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_bad_bench_size_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["doctor", "--cache-root", str(tmp_path), "--bench-bytes", "2Gi"])
    assert exc.value.code == 2
    assert "--bench-bytes" in capsys.readouterr().err


# ---- the verdicts, from facts ------------------------------------------------------------------

ROOT = RootFacts(
    path="/cache",
    exists=True,
    is_dir=True,
    uid=0,
    gid=1000,
    mode=stat.S_IFDIR | 0o2775,
    writable=True,
    euid=65532,
    groups=(1000, 65532),
)


@pytest.mark.parametrize(
    ("facts", "status", "words"),
    [
        pytest.param(ROOT, Status.OK, "writable", id="group-writable-setgid"),
        pytest.param(
            RootFacts(path="/cache", exists=False), Status.FAIL, "not a directory", id="missing"
        ),
        pytest.param(
            RootFacts(**{**ROOT.__dict__, "writable": False, "mode": stat.S_IFDIR | 0o755}),
            Status.FAIL,
            "cannot create files",
            id="not-writable",
        ),
        pytest.param(
            RootFacts(**{**ROOT.__dict__, "read_only_fs": True}),
            Status.FAIL,
            "mounted read-only",
            id="read-only-fs",
        ),
        pytest.param(
            RootFacts(**{**ROOT.__dict__, "groups": (65532,), "mode": stat.S_IFDIR | 0o777}),
            Status.WARN,
            "not through the group",
            id="world-writable",
        ),
        pytest.param(
            RootFacts(**{**ROOT.__dict__, "mode": stat.S_IFDIR | 0o775}),
            Status.WARN,
            "no setgid bit",
            id="no-setgid",
        ),
    ],
)
def test_root_verdicts(facts: RootFacts, status: Status, words: str) -> None:
    result = doctor.check_root(facts)
    assert result.status is status
    assert words in result.detail
    assert result.docs == "docs/troubleshooting.md#root-permissions"


def test_not_writable_hint_names_the_group() -> None:
    facts = RootFacts(**{**ROOT.__dict__, "writable": False})
    assert "chgrp 1000 /cache && chmod 2775 /cache" in doctor.check_root(facts).hint


@pytest.mark.parametrize(
    ("facts", "space", "inodes"),
    [
        pytest.param(SpaceFacts(100, 50, 100, 50), Status.OK, Status.OK, id="plenty"),
        pytest.param(SpaceFacts(100, 5, 100, 50), Status.WARN, Status.OK, id="nearly-full"),
        pytest.param(SpaceFacts(100, 0, 100, 50), Status.FAIL, Status.OK, id="full"),
        pytest.param(SpaceFacts(100, 50, 100, 5), Status.OK, Status.WARN, id="few-inodes"),
        pytest.param(SpaceFacts(100, 50, 100, 0), Status.OK, Status.FAIL, id="no-inodes"),
        pytest.param(SpaceFacts(100, 50, 0, 0), Status.OK, Status.OK, id="no-inode-limit"),
    ],
)
def test_space_verdicts(facts: SpaceFacts, space: Status, inodes: Status) -> None:
    free_space, free_inodes = doctor.check_space(facts)
    assert (free_space.status, free_inodes.status) == (space, inodes)


@pytest.mark.parametrize(
    ("facts", "throughput", "metadata"),
    [
        pytest.param(SpeedFacts(64 << 20, 0.5, 0.5, 50, 0.001), Status.OK, Status.OK, id="fast"),
        pytest.param(
            SpeedFacts(64 << 20, 8.0, 0.5, 50, 0.001), Status.WARN, Status.OK, id="slow-write"
        ),
        pytest.param(
            SpeedFacts(64 << 20, 0.5, 8.0, 50, 0.001), Status.WARN, Status.OK, id="slow-read"
        ),
        pytest.param(
            SpeedFacts(64 << 20, 0.5, 0.5, 50, 0.2), Status.OK, Status.WARN, id="slow-metadata"
        ),
    ],
)
def test_speed_verdicts(facts: SpeedFacts, throughput: Status, metadata: Status) -> None:
    a, b = doctor.check_speed(facts)
    assert (a.status, b.status) == (throughput, metadata)


class _Check:
    def __init__(self, name: str, ok: bool, detail: str, required: bool = True) -> None:
        self.name, self.ok, self.detail, self.required = name, ok, detail, required


class _Report:
    def __init__(self, *checks: _Check) -> None:
        self.checks = checks
        self.ok = all(c.ok for c in checks)


def test_probe_verdicts() -> None:
    good = doctor.check_probe(
        _Report(_Check("rename", True, "atomic"), _Check("symlink", True, ""))
    )
    assert good.status is Status.OK
    assert "rename, symlink" in good.detail
    bad = doctor.check_probe(
        _Report(_Check("rename", True, ""), _Check("o_excl", False, "two clients both created"))
    )
    assert bad.status is Status.FAIL
    assert "o_excl: two clients both created" in bad.detail
    optional = doctor.check_probe(_Report(_Check("symlink", False, "EPERM", required=False)))
    assert optional.status is Status.WARN
    assert doctor.check_probe(None, error="x").status is Status.WARN


SETPRIV = shutil.which("setpriv")


@pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv")
@pytest.mark.parametrize(
    ("group", "mode", "groups", "status"),
    [
        pytest.param(0, 0o755, "65532", "fail", id="root-owned-755"),
        pytest.param(1000, 0o2775, "1000", "ok", id="group-1000-setgid"),
        pytest.param(1000, 0o2775, "65532", "fail", id="not-in-the-group"),
    ],
)
def test_as_the_fetchers_uid(group: int, mode: int, groups: str, status: str) -> None:
    """A real process as uid 65532 (the images' user) with the given groups, as a pod's
    fsGroup would give it, on a root-owned share root."""
    import tempfile

    # pytest's tmp folders are private to root (0700): the share needs a path uid 65532 can walk
    base = Path(tempfile.mkdtemp(prefix="doctor-share-"))
    base.chmod(0o755)
    try:
        _run_as_fetcher(base / "share", group=group, mode=mode, groups=groups, status=status)
    finally:
        shutil.rmtree(base)


def _run_as_fetcher(root: Path, *, group: int, mode: int, groups: str, status: str) -> None:
    assert SETPRIV is not None
    root.mkdir()
    os.chown(root, 0, group)
    root.chmod(mode)
    exe = Path(sys.executable).parent / "kserve-cache"
    result = subprocess.run(
        [
            SETPRIV,
            "--reuid",
            "65532",
            "--regid",
            "65532",
            f"--groups={groups}",
            str(exe),
            "doctor",
            "-o",
            "json",
            "--cache-root",
            str(root),
            "--bench-bytes",
            "1Mi",
            "--metadata-files",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["root-permissions"]["status"] == status, checks["root-permissions"]
    assert "running as uid 65532" in checks["root-permissions"]["detail"]
    if status == "fail":
        assert result.returncode == 1, result.stderr
        assert checks["capability-probe"]["status"] == "warn"  # not run: cannot write
        assert "chmod 2775" in checks["root-permissions"]["hint"]
    else:
        # (the probe's second process needs this machine's interpreter, which may live where
        # uid 65532 cannot go: its verdict is not judged here)
        assert "capability-probe" in checks
        assert checks["throughput"]["status"] in {"ok", "warn"}
        assert "(1 MiB, fsync'd)" in checks["throughput"]["detail"]
        assert not list(root.iterdir()) or {p.name for p in root.iterdir()} <= {".probe"}
