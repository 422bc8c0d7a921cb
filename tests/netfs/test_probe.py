"""The capability probe on the local filesystem, on GlusterFS and on every faultfs mode; the
record on the volume; the refusal of `fetch`, `warm` and `gc` (exit 9) and its override."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.cache.conftest import CLI, run_fetch
from webhook.cache.fetch import ErrorKind, FetchError
from webhook.cache.probe import (
    ALLOW_UNSAFE_ENV,
    PROBE_VERSION,
    RECORD_NAME,
    ensure_probed,
    probe_volume,
    read_record,
)

from .conftest import Nodes
from .faultfs import FaultFS
from .procs import digests, expected

REQUIRED = ("exclusive-create", "rename-dir-atomic", "rename-dir-no-replace", "fsync")

# faultfs mode -> the required checks that must fail (empty: a safe mode, all must pass)
MODES: list[Any] = [
    pytest.param({}, (), id="passthrough"),
    pytest.param({"nonexcl": True}, ("exclusive-create",), id="nonexcl"),
    pytest.param(
        {"rename_copy": "manifest-first"},
        ("rename-dir-atomic", "rename-dir-no-replace"),
        id="rename-copy-manifest-first",
    ),
    pytest.param(
        {"rename_copy": "file-by-file"},
        ("rename-dir-atomic", "rename-dir-no-replace"),
        id="rename-copy-file-by-file",
    ),
    pytest.param({"rename_lies": True}, ("rename-dir-atomic",), id="rename-lies"),
    pytest.param({"eperm": True}, (), id="eperm"),
    pytest.param({"estale": ["*/.usage/*", "*/.locks/*"], "estale_times": 0}, (), id="estale"),
]


def _assert_report(root: Path, failing: tuple[str, ...]) -> None:
    report = probe_volume(root)
    names = [c.name for c in report.checks]
    assert set(REQUIRED) <= set(names)
    assert "symlink" in names
    assert tuple(c.name for c in report.failed) == failing, report.format_report()
    assert report.ok is (not failing)
    assert not any((root / ".probe").iterdir()), "the scratch folders are removed"
    text = report.format_report()
    for name in failing:
        assert f"FAIL {name}" in text


def test_local_filesystem_is_safe(tmp_path: Path) -> None:
    _assert_report(tmp_path, ())
    report = ensure_probed(tmp_path)
    assert report.ok
    assert report.check("symlink") is not None
    assert report.check("symlink").ok  # type: ignore[union-attr]


@pytest.mark.faultfs
@pytest.mark.parametrize(("faults", "failing"), MODES)
def test_probe_on_faultfs(
    faultfs: FaultFS, faults: dict[str, Any], failing: tuple[str, ...]
) -> None:
    faultfs.set(**faults)
    _assert_report(faultfs.root, failing)


@pytest.mark.netfs
def test_gluster_is_safe(gluster: Nodes) -> None:
    _assert_report(gluster[0], ())


@pytest.mark.netfs
@pytest.mark.parametrize("gluster_options", [{"performance.md-cache-timeout": "60"}])
def test_gluster_with_metadata_caching_is_safe(gluster: Nodes) -> None:
    _assert_report(gluster[1], ())


def test_record_is_kept_and_reprobed_when_stale(tmp_path: Path) -> None:
    first = ensure_probed(tmp_path)
    record = tmp_path / RECORD_NAME
    data = json.loads(record.read_text())
    assert data["version"] == PROBE_VERSION
    assert data["ok"] is True
    again = ensure_probed(tmp_path)
    assert again.probed_at == first.probed_at, "a valid record is not probed again"
    data["software"] = "0.0.0-other"
    record.write_text(json.dumps(data))
    assert read_record(tmp_path) is None
    assert ensure_probed(tmp_path).probed_at > first.probed_at
    record.write_text("{garbled")
    assert ensure_probed(tmp_path).ok
    assert read_record(tmp_path) is not None


def test_an_unsafe_record_refuses_and_the_override_goes_on(tmp_path: Path) -> None:
    report = probe_volume(tmp_path)
    data = json.loads(report.to_json())
    for check in data["checks"]:
        if check["name"] == "exclusive-create":
            check["ok"] = False
            check["detail"] = "planted"
    (tmp_path / RECORD_NAME).write_text(json.dumps(data))
    with pytest.raises(FetchError) as err:
        ensure_probed(tmp_path)
    assert err.value.kind is ErrorKind.UNSAFE_VOLUME
    assert "exclusive create" in err.value.message
    assert "s3fs" in err.value.message
    assert "--allow-unsafe-volume" in err.value.message
    assert not ensure_probed(tmp_path, allow_unsafe=True).ok


def test_a_probe_that_cannot_run_is_a_refusal_not_a_pass(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / ".probe").write_text("a file where the scratch folder goes")
    with pytest.raises(FetchError) as err:
        ensure_probed(root)
    assert err.value.kind is ErrorKind.UNSAFE_VOLUME
    assert "capability probe" in err.value.message
    assert not (root / RECORD_NAME).exists()


@pytest.mark.faultfs
def test_fetch_warm_gc_refuse_an_unsafe_volume(faultfs: FaultFS, s3: Any) -> None:
    faultfs.set(nonexcl=True)
    uri = "s3://models/llama"
    run = run_fetch(uri, faultfs.root, env=s3.env())
    assert run.code == 9, run.stderr
    assert run.result["error"] == "unsafe-volume"
    assert "exclusive create" in run.result["message"]
    assert "unsafe-volume" in run.termination
    assert not (faultfs.backing_root / "models").exists(), "nothing was downloaded"
    warm = subprocess.run(
        [str(CLI), "warm", "--uri", uri, "--cache-root", str(faultfs.root)],
        capture_output=True, text=True, env=s3.env(), check=False, timeout=60,
    )  # fmt: skip
    assert warm.returncode == 9, warm.stderr
    gc = subprocess.run(
        [str(CLI), "gc", "--cache-root", str(faultfs.root), "--max-bytes", "1G", "--no-cluster"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert gc.returncode == 9, gc.stderr
    assert "unsafe" in gc.stderr

    # The admin override: the flag, or the environment variable.
    for extra, env in (
        (("--allow-unsafe-volume",), s3.env()),
        ((), s3.env(**{ALLOW_UNSAFE_ENV: "1"})),
    ):
        faultfs.set(nonexcl=True)
        run = run_fetch(uri, faultfs.root, env=env, extra=extra)
        assert run.code == 0, run.stderr
        assert "override" in run.stderr
        assert digests(Path(run.result["path"])) == expected(s3.objects, "llama")
