"""`kserve-cache prepare-volume`: after it, a non-root fetch (uid 65532, the group only) works
on a share whose root belongs to root; before it, the same fetch is refused. And the example
Job is a valid Kubernetes object whose arguments our parser accepts."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.cache.conftest import CLI, REPO, S3
from webhook.cli import build_parser
from webhook.cli.prepare_volume import DEFAULT_GID, FOLDERS
from webhook.clusterconfig import ClusterConfig
from webhook.keys import cache_key

from .procs import digests, expected

UID = 65532
GID = DEFAULT_GID
LLAMA = "s3://models/llama"
EXAMPLE = REPO / "manifests" / "examples" / "prepare-volume-job.yaml"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="prepare-volume runs as root")


def test_default_gid_is_the_cluster_configs_fs_group() -> None:
    assert ClusterConfig().fsGroup == GID


def _drop() -> Callable[[], None]:
    def preexec() -> None:
        os.setgroups([])
        os.setgid(GID)
        os.setuid(UID)
        os.umask(0o022)

    return preexec


def _python_for_others() -> list[str]:
    """An interpreter uid 65532 can run: ours, or the system's of the same version with our
    site-packages on the path (a pyenv build under /root is not readable by others)."""
    site = sysconfig.get_paths()["purelib"]
    exe = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in ([sys.executable], [exe]):
        if not Path(candidate[0]).exists():
            continue
        try:
            probe = subprocess.run(
                [*candidate, "-c", "import webhook.cli, kserve_storage"],
                preexec_fn=_drop(),
                env={"PYTHONPATH": f"{REPO}:{site}", "HOME": "/tmp", "PATH": os.environ["PATH"]},
                capture_output=True,
                check=False,
                timeout=120,
            )
        except OSError:  # cannot even be executed by that user
            continue
        if probe.returncode == 0:
            return candidate
    pytest.skip("no Python interpreter that uid 65532 can run with this venv")


@pytest.fixture
def share() -> Iterator[Path]:
    """A share root owned by root:root 0755, in a folder others can reach (not under /root)."""
    base = Path(tempfile.mkdtemp(prefix="kserve-cache-share-", dir="/tmp"))
    base.chmod(0o755)
    root = base / "share"
    root.mkdir(mode=0o755)
    os.chown(root, 0, 0)
    try:
        yield root
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _fetch_as_others(python: list[str], root: Path, s3: S3) -> subprocess.CompletedProcess[str]:
    site = sysconfig.get_paths()["purelib"]
    env = s3.env(PYTHONPATH=f"{REPO}:{site}", HOME="/tmp")
    code = "import sys; from webhook.cli import main; sys.exit(main(sys.argv[1:]))"
    term = root.parent / "termination.log"
    term.touch()
    term.chmod(0o666)
    return subprocess.run(
        [*python, "-c", code, "fetch", f"--uri={LLAMA}", f"--cache-root={root}",
         f"--key={cache_key(LLAMA, '')}", f"--termination-log={term}"],
        preexec_fn=_drop(), env=env, capture_output=True, text=True, check=False, timeout=180,
    )  # fmt: skip


def _result(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines, proc.stderr[-2000:]
    data: dict[str, Any] = json.loads(lines[-1])
    return data


@needs_root
def test_non_root_fetch_works_after_prepare_volume(share: Path, s3: S3) -> None:
    python = _python_for_others()
    before = _fetch_as_others(python, share, s3)
    assert before.returncode == 5, before.stderr[-2000:]
    assert _result(before)["error"] == "cache-not-writable"
    assert not any(share.iterdir()), "a refused fetch left nothing behind"

    dry = subprocess.run(
        [str(CLI), "prepare-volume", f"--cache-root={share}", "--dry-run"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "would create" in dry.stdout
    assert not any(share.iterdir()), "--dry-run changes nothing"
    assert stat.S_IMODE(share.stat().st_mode) == 0o755

    prep = subprocess.run(
        [str(CLI), "prepare-volume", f"--cache-root={share}", f"--gid={GID}", "--json"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert prep.returncode == 0, prep.stderr
    doc = json.loads(prep.stdout)
    assert doc["probe"]["ok"] is True
    for path in (share, *(share / name for name in FOLDERS)):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (0, GID), path
        assert stat.S_IMODE(st.st_mode) == 0o2775, path

    again = subprocess.run(
        [str(CLI), "prepare-volume", f"--cache-root={share}", f"--gid={GID}", "--json"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert {f["action"] for f in json.loads(again.stdout)["folders"]} == {"ok"}, "idempotent"

    after = _fetch_as_others(python, share, s3)
    assert after.returncode == 0, after.stderr[-3000:]
    result = _result(after)
    assert result["outcome"] == "miss"
    entry = Path(result["path"])
    assert digests(entry) == expected(s3.objects, "llama")
    assert entry.stat().st_uid == UID
    assert entry.stat().st_gid == GID, "setgid folders hand the group down"
    hit = _fetch_as_others(python, share, s3)
    assert hit.returncode == 0, hit.stderr[-2000:]
    assert _result(hit)["outcome"] == "hit"


def test_prepare_volume_refuses_a_missing_root(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(CLI), "prepare-volume", f"--cache-root={tmp_path / 'nope'}"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 5
    assert "not a folder" in proc.stderr
    assert not (tmp_path / "nope").exists()


def test_prepare_volume_refuses_a_bad_gid(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(CLI), "prepare-volume", f"--cache-root={tmp_path}", "--gid=-3"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert not any(tmp_path.iterdir())


def _job() -> dict[str, Any]:
    (job,) = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    return job  # type: ignore[no-any-return]


@pytest.mark.parametrize("version", ["1.30", kubernetes_validate.latest_version()])
def test_example_job_is_valid(version: str) -> None:
    kubernetes_validate.validate(_job(), version, strict=True)


def test_example_job_runs_prepare_volume_as_root_once(tmp_path: Path) -> None:
    job = _job()
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["runAsUser"] == 0
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) <= {"CHOWN", "FOWNER", "FSETID", "DAC_OVERRIDE"}
    args: list[str] = container["args"]
    assert args[0] == "prepare-volume"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == "kserve-model-cache"
    root_arg = next(a for a in args if a.startswith("--cache-root"))
    assert root_arg == f"--cache-root={mounts['cache']}"
    local = [a if not a.startswith("--cache-root") else f"--cache-root={tmp_path}" for a in args]
    parsed = build_parser().parse_args(local)
    assert parsed.gid == ClusterConfig().fsGroup
