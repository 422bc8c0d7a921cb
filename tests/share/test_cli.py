"""`kserve-cache share` against the fake API server: printed YAML, `--apply` (idempotent), the
refusals, and a trap claim that already exists in a target namespace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.fakekube import FakeKube
from webhook.cli import main
from webhook.share import ShareTarget, same_volume, shared_volume_name

from .volumes import CLAIM, EFS_SPEC, NFS_SPEC, WRITER_NS, spec_with

WRITER_PV = "pvc-3f6a1c2e-writer"


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube() as server:
        yield server


def writer(kube: FakeKube, spec: dict[str, Any], *, phase: str = "Bound") -> None:
    kube.add_volume(WRITER_PV, spec)
    kube.add_claim(
        WRITER_NS, CLAIM, volume_name=WRITER_PV if phase == "Bound" else None, phase=phase
    )


def share(kube: FakeKube, tmp_path: Path, *args: str) -> list[str]:
    config = kube.write_kubeconfig(tmp_path / "kubeconfig")
    return ["share", f"{WRITER_NS}/{CLAIM}", "--kubeconfig", str(config), *args]


@pytest.mark.parametrize("spec", [EFS_SPEC, NFS_SPEC], ids=["csi", "nfs"])
def test_prints_valid_objects_on_the_same_volume(
    kube: FakeKube, tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: dict[str, Any]
) -> None:
    writer(kube, spec)
    code = main(share(kube, tmp_path, "--to", "team-a", "--to", "team-b", "--read-only"))
    out = capsys.readouterr()
    assert code == 0, out.err
    docs = [d for d in yaml.safe_load_all(out.out) if d]
    assert [d["kind"] for d in docs] == ["PersistentVolume", "PersistentVolumeClaim"] * 2
    source = kube.volume(WRITER_PV)
    assert source is not None
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    for pv in docs[::2]:
        assert same_volume(source, pv)
        assert pv["spec"]["accessModes"] == ["ReadOnlyMany"]
    # printing changed nothing in the cluster
    assert [r.method for r in kube.requests] == ["GET", "GET"]
    assert kube.claim("team-a", CLAIM) is None


def test_apply_creates_bound_pairs_and_is_idempotent(
    kube: FakeKube, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    writer(kube, EFS_SPEC)
    assert main(share(kube, tmp_path, "--to", "team-a", "--apply")) == 0
    out = capsys.readouterr().out
    name = shared_volume_name(WRITER_PV, ShareTarget("team-a", CLAIM))
    assert f"persistentvolume/{name} created" in out
    assert f"team-a: persistentvolumeclaim/{CLAIM} created" in out
    pv, pvc, source = kube.volume(name), kube.claim("team-a", CLAIM), kube.volume(WRITER_PV)
    assert pv is not None
    assert pvc is not None
    assert source is not None
    assert pv["spec"]["csi"]["volumeHandle"] == EFS_SPEC["csi"]["volumeHandle"]
    assert same_volume(source, pv)
    assert pvc["status"]["phase"] == "Bound"
    assert pvc["spec"]["volumeName"] == name
    assert pv["spec"]["claimRef"]["uid"] == pvc["metadata"]["uid"]
    # again: nothing new, nothing fails
    assert main(share(kube, tmp_path, "--to", "team-a", "--apply")) == 0
    assert capsys.readouterr().out.count("unchanged") == 2


def test_apply_refuses_a_trap_claim_already_there(
    kube: FakeKube, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    writer(kube, EFS_SPEC)
    kube.add_claim("team-a", CLAIM, volume_name="pvc-fresh-empty-one")
    code = main(share(kube, tmp_path, "--to", "team-a", "--apply"))
    err = capsys.readouterr().err
    assert code == 1
    assert "bound to volume pvc-fresh-empty-one" in err
    assert "new, empty volume" in err
    assert "nothing was created" in err
    assert all(r.method == "GET" for r in kube.requests)  # no volume was created either
    claim = kube.claim("team-a", CLAIM)
    assert claim is not None
    assert claim["spec"]["volumeName"] == "pvc-fresh-empty-one"


@pytest.mark.parametrize(
    ("spec", "phase", "why"),
    [
        pytest.param(EFS_SPEC, "Pending", "not bound", id="unbound"),
        pytest.param(
            spec_with(EFS_SPEC, csi=None, hostPath={"path": "/srv"}),
            "Bound",
            "hostPath",
            id="hostpath",
        ),
        pytest.param(
            spec_with(
                EFS_SPEC,
                csi={"driver": "ebs.csi.aws.com", "volumeHandle": "vol-1"},
                accessModes=["ReadWriteOnce"],
            ),
            "Bound",
            "block or node-local",
            id="ebs",
        ),
    ],
)
def test_refusals_change_nothing(
    kube: FakeKube,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    spec: dict[str, Any],
    phase: str,
    why: str,
) -> None:
    writer(kube, spec, phase=phase)
    code = main(share(kube, tmp_path, "--to", "team-a", "--apply"))
    err = capsys.readouterr().err
    assert code == 2
    assert why in err
    assert all(r.method == "GET" for r in kube.requests)
    assert kube.claim("team-a", CLAIM) is None


def test_missing_claim_and_bad_source(
    kube: FakeKube, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(share(kube, tmp_path, "--to", "team-a")) == 2
    assert f"claim {WRITER_NS}/{CLAIM} not found" in capsys.readouterr().err
    config = kube.write_kubeconfig(tmp_path / "kubeconfig")
    assert main(["share", "no-slash", "--to", "x", "--kubeconfig", str(config)]) == 2
    assert "NAMESPACE/CLAIM" in capsys.readouterr().err


def test_forbidden_volume_read_is_a_clear_failure(
    kube: FakeKube, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    writer(kube, EFS_SPEC)
    kube.forbid("persistentvolumes")
    assert main(share(kube, tmp_path, "--to", "team-a")) == 1
    err = capsys.readouterr().err
    assert "403" in err
    assert "persistentvolumes" in err
