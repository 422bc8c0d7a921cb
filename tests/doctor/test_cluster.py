"""`kserve-cache doctor` against the fake API server: a healthy install passes every check, and
each way of breaking it turns exactly the check that names it to ✗ (or !).

The cluster is the real rendered overlay (`kubectl kustomize manifests/overlays/self-signed`),
KServe's own MutatingWebhookConfiguration, and a certificate made by `webhook.certs`.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import MANIFESTS, find, kustomize
from tests.fakekube import FakeKube
from webhook import certs
from webhook.cli import main

KSERVE_WEBHOOK = MANIFESTS.parent / "tests/deploy/fixtures/kserve-mutatingwebhookconfiguration.yaml"
NS = "kserve-cache"
DNS = certs.service_dns_names("kserve-cache-webhook", namespace=NS)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Install:
    kube: FakeKube
    kubeconfig: Path
    objects: dict[str, dict[str, Any]]
    ca: certs.KeyPair
    serving: certs.KeyPair

    def put(self, name: str) -> None:
        self.kube.put_object(self.objects[name])

    def change(self, name: str, edit: Callable[[dict[str, Any]], None]) -> None:
        obj = copy.deepcopy(self.objects[name])
        edit(obj)
        self.kube.put_object(obj)

    def remove(self, name: str) -> None:
        self.kube.remove_object(self.objects[name])


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return kustomize(MANIFESTS / "overlays" / "self-signed")


def secret(serving: certs.KeyPair) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": "kserve-cache-webhook-tls", "namespace": NS},
        "data": {"tls.crt": b64(serving.cert_pem), "tls.key": b64(serving.key_pem)},
    }


def healthy_install(kube: FakeKube, tmp_path: Path, rendered: list[dict[str, Any]]) -> Install:
    ca = certs.generate_ca()
    serving = certs.generate_serving_cert(ca, dns_names=DNS)
    deployment = copy.deepcopy(find(rendered, "Deployment", "kserve-cache-webhook"))
    deployment["status"] = {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}
    ours = copy.deepcopy(find(rendered, "MutatingWebhookConfiguration", "kserve-cache"))
    for hook in ours["webhooks"]:
        hook["clientConfig"]["caBundle"] = b64(ca.cert_pem)
    kserve = next(
        d
        for d in yaml.safe_load_all(KSERVE_WEBHOOK.read_text())
        if d and d["kind"] == "MutatingWebhookConfiguration"
    )
    objects = {
        "deployment": deployment,
        "webhook": ours,
        "kserve": kserve,
        "configmap": copy.deepcopy(find(rendered, "ConfigMap", "kserve-cache-config")),
        "secret": secret(serving),
        "csidriver": {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "CSIDriver",
            "metadata": {"name": "nfs.csi.k8s.io"},
            "spec": {"attachRequired": False, "fsGroupPolicy": "File"},
        },
    }
    for obj in objects.values():
        kube.put_object(obj)
    kube.add_namespace("models", annotations={"cache.kserve.io/policy": "default-on"})
    kube.add_claim("models", "kserve-model-cache")
    kube.add_volume(
        "pv-models",
        {
            "accessModes": ["ReadWriteMany"],
            "capacity": {"storage": "100Gi"},
            "csi": {"driver": "nfs.csi.k8s.io", "volumeHandle": "nfs#models"},
        },
    )
    kube.set_claim_volume("models", "kserve-model-cache", "pv-models")
    kube.add_namespace("other")  # not opted in: not checked
    return Install(kube, kube.write_kubeconfig(tmp_path / "kubeconfig"), objects, ca, serving)


@pytest.fixture
def install(tmp_path: Path, rendered: list[dict[str, Any]]) -> Iterator[Install]:
    with FakeKube() as kube:
        yield healthy_install(kube, tmp_path, rendered)


def doctor(
    install: Install, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, dict[str, dict[str, Any]]]:
    code = main(["doctor", "--kubeconfig", str(install.kubeconfig), "-o", "json", *extra])
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] == (code == 0)
    links_resolve(out["checks"])
    return code, {c["name"]: c for c in out["checks"]}


def links_resolve(checks: list[dict[str, Any]]) -> None:
    """Every result's docs link names a page and a heading that exist."""
    from tests.docs.test_docs import anchors

    for check in checks:
        page, _, anchor = check["docs"].partition("#")
        assert anchor in anchors(MANIFESTS.parent / page), check["docs"]


def test_a_healthy_install_passes_every_check(
    install: Install, capsys: pytest.CaptureFixture[str]
) -> None:
    code, checks = doctor(install, capsys)
    assert {name: c["status"] for name, c in checks.items()} == {
        "api-reachable": "ok",
        "deployment-ready": "ok",
        "certificate-valid": "ok",
        "ca-bundle": "ok",
        "webhook-order": "ok",
        "webhook-selectors": "ok",
        "kserve-pod-mutator": "ok",
        "cluster-config": "ok",
        "images": "ok",
        "claim models/kserve-model-cache": "ok",
        "access models/kserve-model-cache": "ok",
        "fsgroup models/kserve-model-cache": "ok",
    }
    assert code == 0
    assert "kserve-cache-webhook.kserve-cache.svc" in checks["certificate-valid"]["detail"]
    assert "other" not in json.dumps(checks)
    # only reads: doctor never writes to the cluster
    assert {r.method for r in install.kube.requests} == {"GET"}


def test_text_output_has_symbols_hints_and_links(
    install: Install, capsys: pytest.CaptureFixture[str]
) -> None:
    install.change("deployment", lambda d: d["status"].update(readyReplicas=0))
    code = main(["doctor", "--kubeconfig", str(install.kubeconfig)])
    out = capsys.readouterr().out
    assert code == 1
    assert "✓ certificate-valid:" in out
    assert "✗ deployment-ready: Deployment kserve-cache/kserve-cache-webhook: 0/2" in out
    assert "    hint: kubectl -n kserve-cache describe pods" in out
    assert "    see: docs/troubleshooting.md#deployment-ready" in out
    assert out.rstrip().endswith("(11 ok, 0 warnings, 1 failed)")


def _expire(install: Install, *, days: int, dns: tuple[str, ...] = DNS) -> None:
    """A serving certificate of the same CA with `days` left (negative: expired that long ago)."""
    now = dt.datetime.now(dt.UTC)
    if days > 0:
        serving = certs.generate_serving_cert(install.ca, dns_names=dns, days=days, now=now)
    else:
        start = now - dt.timedelta(days=1 - days)
        serving = certs.generate_serving_cert(install.ca, dns_names=dns, days=1, now=start)
    install.kube.put_object(secret(serving))


def _other_ca(install: Install) -> None:
    other = certs.generate_ca()
    install.change(
        "webhook",
        lambda w: [h["clientConfig"].update(caBundle=b64(other.cert_pem)) for h in w["webhooks"]],
    )


def _no_ca(install: Install) -> None:
    install.change("webhook", lambda w: [h["clientConfig"].pop("caBundle") for h in w["webhooks"]])


def _swap_key(install: Install) -> None:
    other = certs.generate_serving_cert(install.ca, dns_names=DNS)
    obj = secret(install.serving)
    obj["data"]["tls.key"] = b64(other.key_pem)
    install.kube.put_object(obj)


def _rename(install: Install, *, reinvoke: bool = True) -> None:
    install.remove("webhook")

    def edit(w: dict[str, Any]) -> None:
        w["metadata"]["name"] = "aaa-kserve-cache"
        for h in w["webhooks"]:
            h["reinvocationPolicy"] = "IfNeeded" if reinvoke else "Never"

    install.change("webhook", edit)


def _no_pod_rule(install: Install) -> None:
    install.change("webhook", lambda w: w["webhooks"][0]["rules"][0].update(operations=["UPDATE"]))


def _fail_closed(install: Install) -> None:
    install.change("webhook", lambda w: w["webhooks"][0].update(failurePolicy="Fail"))


def _no_kserve_pods(install: Install) -> None:
    install.change(
        "kserve",
        lambda k: k.update(
            webhooks=[h for h in k["webhooks"] if "pods" not in json.dumps(h.get("rules"))]
        ),
    )


def _bad_config(install: Install) -> None:
    install.change("configmap", lambda c: c["data"].update({"config.yaml": "policy: sometimes\n"}))


def _claim(edit: Callable[[FakeKube], None]) -> Callable[[Install], None]:
    return lambda install: edit(install.kube)


def _fs_group(policy: str | None) -> Callable[[Install], None]:
    def edit(install: Install) -> None:
        if policy is None:
            install.remove("csidriver")
        else:
            install.change("csidriver", lambda d: d["spec"].update(fsGroupPolicy=policy))

    return edit


def _fetcher_env(value: str) -> Callable[[Install], None]:
    def edit(install: Install) -> None:
        def change(d: dict[str, Any]) -> None:
            (container,) = d["spec"]["template"]["spec"]["containers"]
            for env in container["env"]:
                if env["name"] == "KSERVE_CACHE_FETCHER_IMAGE":
                    env["value"] = value

        install.change("deployment", change)

    return edit


BREAKAGES = [
    pytest.param(
        _fetcher_env("registry.example.com/fetcher:0.0.9"),
        "images",
        "warn",
        "different versions",
        id="image-version-skew",
    ),
    pytest.param(
        lambda i: i.remove("deployment"),
        "deployment-ready",
        "fail",
        "not found",
        id="no-deployment",
    ),
    pytest.param(
        lambda i: i.change("deployment", lambda d: d["status"].update(readyReplicas=1)),
        "deployment-ready",
        "warn",
        "1/2 replicas ready",
        id="half-ready",
    ),
    pytest.param(
        lambda i: i.remove("secret"), "certificate-valid", "fail", "not found", id="no-secret"
    ),
    pytest.param(
        lambda i: _expire(i, days=-1), "certificate-valid", "fail", "expired", id="expired"
    ),
    pytest.param(
        lambda i: _expire(i, days=5), "certificate-valid", "warn", "valid until", id="expiring"
    ),
    pytest.param(
        lambda i: _expire(i, days=300, dns=("kserve-cache-webhook.elsewhere.svc",)),
        "certificate-valid",
        "fail",
        "not kserve-cache-webhook.kserve-cache.svc",
        id="wrong-name",
    ),
    pytest.param(_swap_key, "certificate-valid", "fail", "does not belong", id="foreign-key"),
    pytest.param(_other_ca, "ca-bundle", "fail", "signed the serving certificate", id="other-ca"),
    pytest.param(_no_ca, "ca-bundle", "fail", "empty caBundle", id="no-ca-bundle"),
    pytest.param(
        lambda i: i.remove("webhook"), "ca-bundle", "fail", "not found", id="no-webhook-config"
    ),
    pytest.param(
        _no_pod_rule, "webhook-selectors", "fail", "no rule for pods CREATE", id="no-pod-rule"
    ),
    pytest.param(_fail_closed, "webhook-selectors", "warn", "failurePolicy Fail", id="fail-closed"),
    pytest.param(
        lambda i: i.remove("kserve"), "kserve-pod-mutator", "fail", "no pod webhook", id="no-kserve"
    ),
    pytest.param(
        _no_kserve_pods, "kserve-pod-mutator", "fail", "no pod webhook", id="kserve-without-pods"
    ),
    pytest.param(_bad_config, "cluster-config", "fail", "policy", id="bad-config"),
    pytest.param(
        lambda i: i.remove("configmap"),
        "cluster-config",
        "warn",
        "built-in defaults",
        id="no-config",
    ),
    pytest.param(
        _claim(lambda k: k.delete_claim("models", "kserve-model-cache")),
        "claim models/kserve-model-cache",
        "fail",
        "not found",
        id="no-claim",
    ),
    pytest.param(
        _claim(lambda k: k.modify_claim("models", "kserve-model-cache", phase="Pending")),
        "claim models/kserve-model-cache",
        "fail",
        "is Pending",
        id="pending-claim",
    ),
    pytest.param(
        _claim(
            lambda k: k.modify_claim(
                "models", "kserve-model-cache", access_modes=("ReadWriteOnce",)
            )
        ),
        "access models/kserve-model-cache",
        "fail",
        "not ReadWriteMany",
        id="rwo-claim",
    ),
    pytest.param(
        _fs_group("ReadWriteOnceWithFSType"),
        "fsgroup models/kserve-model-cache",
        "warn",
        "not to this ReadWriteMany share",
        id="fsgroup-rwo-only",
    ),
    pytest.param(
        _fs_group("None"),
        "fsgroup models/kserve-model-cache",
        "warn",
        "never applied",
        id="fsgroup-none",
    ),
    pytest.param(
        _fs_group(None),
        "fsgroup models/kserve-model-cache",
        "warn",
        "the default policy",
        id="no-csidriver",
    ),
]


@pytest.mark.parametrize(("breakage", "check", "status", "words"), BREAKAGES)
def test_each_breakage_is_named(
    install: Install,
    capsys: pytest.CaptureFixture[str],
    breakage: Callable[[Install], None],
    check: str,
    status: str,
    words: str,
) -> None:
    breakage(install)
    code, checks = doctor(install, capsys)
    assert checks[check]["status"] == status, checks[check]
    assert words in checks[check]["detail"]
    assert checks[check]["hint"]
    assert checks[check]["docs"].startswith("docs/troubleshooting.md#")
    assert code == (1 if status == "fail" else 0)
    others = {n: c["status"] for n, c in checks.items() if n != check and c["status"] != "ok"}
    # one breakage, one complaint (a missing configuration is also out of order; a missing
    # certificate cannot be compared with the caBundle)
    assert set(others) <= {
        "webhook-order",
        "webhook-selectors",
        "ca-bundle",
    }


def test_unreachable_api_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kube = FakeKube()
    kube.start()
    kubeconfig = kube.write_kubeconfig(tmp_path / "kc")
    kube.stop()
    code = main(["doctor", "--kubeconfig", str(kubeconfig), "-o", "json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [(c["name"], c["status"]) for c in out["checks"]] == [("api-reachable", "fail")]


def test_forbidden_reads_are_warnings_not_failures(
    install: Install, capsys: pytest.CaptureFixture[str]
) -> None:
    install.kube.forbid("secrets")
    install.kube.forbid("persistentvolumes")
    code, checks = doctor(install, capsys)
    assert checks["certificate-valid"]["status"] == "warn"
    assert "forbidden" in checks["certificate-valid"]["detail"]
    assert checks["ca-bundle"]["status"] == "warn"  # nothing to compare with
    assert checks["fsgroup models/kserve-model-cache"]["status"] == "warn"
    assert code == 0


def test_namespaces_opt_in_by_annotation_or_claim(
    install: Install, capsys: pytest.CaptureFixture[str]
) -> None:
    install.kube.add_namespace("team-b", annotations={"cache.kserve.io/pvc": "team-cache"})
    install.kube.add_namespace("team-c")
    install.kube.add_claim("team-c", "kserve-model-cache", access_modes=("ReadWriteOnce",))
    install.kube.add_namespace("team-d", annotations={"cache.kserve.io/policy": "disabled"})
    code, checks = doctor(install, capsys)
    assert checks["claim team-b/team-cache"]["status"] == "fail"  # annotated, claim missing
    assert checks["access team-c/kserve-model-cache"]["status"] == "fail"
    assert not any("team-d" in name for name in checks)
    assert code == 1
    code, checks = doctor(install, capsys, "--check-namespace", "models")
    assert [n for n in checks if "/" in n] == [
        "claim models/kserve-model-cache",
        "access models/kserve-model-cache",
        "fsgroup models/kserve-model-cache",
    ]
    assert code == 0


def test_in_tree_nfs_volume_spells_out_the_consequence(
    tmp_path: Path, rendered: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeKube() as kube:
        install = healthy_install(kube, tmp_path, rendered)
        kube.add_namespace("nfs", annotations={"cache.kserve.io/enabled": "true"})
        kube.add_claim("nfs", "kserve-model-cache")
        kube.add_volume(
            "pv-nfs", {"accessModes": ["ReadWriteMany"], "nfs": {"server": "s", "path": "/x"}}
        )
        kube.set_claim_volume("nfs", "kserve-model-cache", "pv-nfs")
        _, checks = doctor(install, capsys)
    check = checks["fsgroup nfs/kserve-model-cache"]
    assert check["status"] == "warn"
    assert "never applies fsGroup" in check["detail"]
    assert "writable by group 1000" in check["hint"]


@pytest.mark.parametrize(
    ("reinvoke", "status", "words"),
    [
        pytest.param(True, "warn", "skipped once (awaiting-kserve)", id="reinvoked"),
        pytest.param(False, "fail", "never cached", id="not-reinvoked"),
    ],
)
def test_a_configuration_that_sorts_before_kserve(
    install: Install, capsys: pytest.CaptureFixture[str], reinvoke: bool, status: str, words: str
) -> None:
    _rename(install, reinvoke=reinvoke)
    code, checks = doctor(install, capsys, "--webhook-config", "aaa-kserve-cache")
    assert checks["webhook-order"]["status"] == status
    assert words in checks["webhook-order"]["detail"]
    assert "sorts before inferenceservice.serving.kserve.io" in checks["webhook-order"]["detail"]
    assert code == (1 if status == "fail" else 0)


def test_images_say_where_the_fetcher_image_comes_from(
    install: Install, capsys: pytest.CaptureFixture[str]
) -> None:
    _, checks = doctor(install, capsys)
    assert checks["images"]["detail"] == (
        "webhook ghcr.io/kserve-cache/kserve-cache:0.1.0; fetcher "
        "ghcr.io/kserve-cache/kserve-cache-fetcher:0.1.0 (from the Deployment's "
        "KSERVE_CACHE_FETCHER_IMAGE)"
    )
    install.change(
        "configmap",
        lambda c: c["data"].update(
            {"config.yaml": "initContainer:\n  image: registry.example.com/f@sha256:" + "a" * 64}
        ),
    )
    _, checks = doctor(install, capsys)
    assert checks["images"]["status"] == "ok"  # a digest: no version to compare
    assert "(from the ConfigMap's initContainer.image)" in checks["images"]["detail"]


# ---- the running webhook (--webhook-url) -------------------------------------------------------


@pytest.fixture
def served(install: Install, tmp_path: Path) -> Iterator[tuple[Install, str]]:
    """A real `kserve-cache serve` with the install's certificate (also valid for localhost,
    which the start-up health check uses)."""
    from tests.conftest import start_server, stop_server

    pair = certs.generate_serving_cert(install.ca, dns_names=(*DNS, "localhost"))
    install.serving = pair
    install.kube.put_object(secret(pair))
    folder = tmp_path / "serving"
    folder.mkdir()
    (folder / "tls.crt").write_bytes(pair.cert_pem)
    (folder / "tls.key").write_bytes(pair.key_pem)
    (folder / "ca.crt").write_bytes(install.ca.cert_pem)
    server = start_server(
        tmp_path,
        "--no-cluster",
        cert_args=["--cert-file", str(folder / "tls.crt"), "--key-file", str(folder / "tls.key")],
        ca_file=folder / "ca.crt",
    )
    try:
        yield install, server.url.replace("localhost", "127.0.0.1")
    finally:
        stop_server(server)


def test_the_running_webhook_is_trusted_and_ready(
    served: tuple[Install, str], capsys: pytest.CaptureFixture[str]
) -> None:
    install, url = served
    code, checks = doctor(install, capsys, "--webhook-url", url)
    assert checks["webhook-endpoint"]["status"] == "ok", checks["webhook-endpoint"]
    assert "as kserve-cache-webhook.kserve-cache.svc" in checks["webhook-endpoint"]["detail"]
    assert code == 0


def test_a_webhook_the_ca_bundle_does_not_trust(
    served: tuple[Install, str], capsys: pytest.CaptureFixture[str]
) -> None:
    install, url = served
    _other_ca(install)
    code, checks = doctor(install, capsys, "--webhook-url", url)
    assert checks["webhook-endpoint"]["status"] == "fail"
    assert "TLS: " in checks["webhook-endpoint"]["detail"]
    assert code == 1


def test_a_webhook_serving_another_certificate_than_the_secret(
    served: tuple[Install, str], capsys: pytest.CaptureFixture[str]
) -> None:
    install, url = served
    rotated = certs.generate_serving_cert(install.ca, dns_names=DNS)
    install.kube.put_object(secret(rotated))  # the Secret moved on, the pod did not (yet)
    code, checks = doctor(install, capsys, "--webhook-url", url)
    assert checks["webhook-endpoint"]["status"] == "warn"
    assert "other than the Secret's" in checks["webhook-endpoint"]["detail"]
    assert code == 0


def test_no_webhook_listening(install: Install, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import free_port

    code, checks = doctor(install, capsys, "--webhook-url", f"https://127.0.0.1:{free_port()}")
    assert checks["webhook-endpoint"]["status"] == "fail"
    assert code == 1


def test_an_api_server_failing_half_way_keeps_what_was_checked(
    install: Install, capsys: pytest.CaptureFixture[str]
) -> None:
    install.kube.break_resource("mutatingwebhookconfigurations")
    code = main(["doctor", "--kubeconfig", str(install.kubeconfig), "-o", "json"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    checks = json.loads(captured.out)["checks"]
    assert [c["name"] for c in checks][:3] == [
        "api-reachable",
        "deployment-ready",
        "certificate-valid",
    ]
    assert checks[-1]["name"] == "api-reachable"
    assert checks[-1]["status"] == "fail"
    assert "500" in checks[-1]["detail"]
    assert code == 1


def _predictor(namespace: str, name: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"component": "predictor", "serving.kserve.io/inferenceservice": name},
            "annotations": annotations,
        },
    }


def test_namespaces_whose_predictors_ask_for_the_cache_are_checked(
    install: Install, capsys: pytest.CaptureFixture[str]
) -> None:
    """A predictor with `enabled: "true"` in a namespace with no annotation and no claim: its
    pods are admitted without the cache (pvc-missing), so doctor checks the claim there."""
    install.kube.add_namespace("team-e")
    install.kube.add_namespace("team-f", annotations={"cache.kserve.io/enabled": "false"})
    install.kube.set_pods(
        [
            _predictor("team-e", "iris", {"cache.kserve.io/enabled": "true"}),
            _predictor("team-f", "bert", {"cache.kserve.io/enabled": "true"}),  # ns says no
            {
                **_predictor("team-g", "other", {}),
                "metadata": {"name": "x", "namespace": "team-g", "labels": {"app": "web"}},
            },
        ]
    )
    code, checks = doctor(install, capsys)
    assert checks["claim team-e/kserve-model-cache"]["status"] == "fail"
    assert "pvc-missing" in checks["claim team-e/kserve-model-cache"]["detail"]
    assert not any("team-f" in name or "team-g" in name for name in checks)
    assert code == 1
    assert any(
        r.path == "/api/v1/pods" and r.query.get("labelSelector") == "component=predictor"
        for r in install.kube.requests
    )
