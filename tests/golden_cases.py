"""Golden cases (Istio style): one folder each under tests/golden with `input.json` (a pod),
`case.json` (namespace, note), optional `namespace.json` (Namespace annotations) and
`config.yaml` (cluster config), and `expected.json`, rewritten by `pytest --update-golden`."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webhook.clusterconfig import ClusterConfig, parse_config
from webhook.namespaces import NamespaceView

GOLDEN = Path(__file__).resolve().parent / "golden"


@dataclass(frozen=True)
class Case:
    name: str
    folder: Path
    pod: dict[str, Any]
    namespace: str
    namespace_annotations: dict[str, str] | None
    config_text: str | None
    schema_valid: bool
    note: str

    @property
    def config(self) -> ClusterConfig:
        return parse_config(self.config_text or "", source=str(self.folder / "config.yaml"))

    @property
    def view(self) -> NamespaceView:
        return NamespaceView(name=self.namespace, annotations=self.namespace_annotations)

    @property
    def expected_file(self) -> Path:
        return self.folder / "expected.json"


def load_cases() -> list[Case]:
    cases = []
    for folder in sorted(p for p in GOLDEN.iterdir() if p.is_dir()):
        meta = json.loads((folder / "case.json").read_text())
        ns_file = folder / "namespace.json"
        config_file = folder / "config.yaml"
        cases.append(
            Case(
                name=folder.name,
                folder=folder,
                pod=json.loads((folder / "input.json").read_text()),
                namespace=meta.get("namespace", "default"),
                namespace_annotations=json.loads(ns_file.read_text()) if ns_file.exists() else None,
                config_text=config_file.read_text() if config_file.exists() else None,
                schema_valid=meta.get("schema_valid", True),
                note=meta.get("note", ""),
            )
        )
    return cases


def make_review(pod: dict[str, Any], *, namespace: str, uid: str | None = None) -> dict[str, Any]:
    """An AdmissionReview v1 for a Pod CREATE, as the API server sends it."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }
