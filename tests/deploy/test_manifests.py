"""The kustomize overlays render, validate against Kubernetes schemas, and are wired together."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import MANIFESTS, OVERLAYS, ROOT, find
from tests.deploy.crd_schemas import SCHEMAS
from webhook import certs, names
from webhook.cli import build_parser
from webhook.clusterconfig import ClusterConfig, InitContainerTemplate, PolicyMode, parse_config
from webhook.policy import resolve_policy

# The oldest Kubernetes the manifests support (the preStop `sleep` action is on by default
# from 1.30) and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
NAMESPACE = "kserve-cache"
WEBHOOK_SERVICE = "kserve-cache-webhook"
KSERVE_WEBHOOK = Path(__file__).parent / "fixtures" / "kserve-mutatingwebhookconfiguration.yaml"


def validate(obj: dict[str, Any]) -> None:
    schema = SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if schema is not None:
        jsonschema.validate(obj, schema)
        return
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def example_objects() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in sorted((MANIFESTS / "examples").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def webhook(objects: list[dict[str, Any]]) -> dict[str, Any]:
    config = find(objects, "MutatingWebhookConfiguration", "kserve-cache")
    (hook,) = config["webhooks"]
    return hook


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = find(objects, "Deployment", "kserve-cache-webhook")["spec"]["template"][
        "spec"
    ]
    return spec


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (only,) = pod_spec(objects)["containers"]
    return only


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    kinds = {o["kind"] for o in objects}
    assert {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "MutatingWebhookConfiguration",
    } <= kinds
    for obj in objects:
        validate(obj)
    namespaced = [o for o in objects if o["kind"] not in {"Namespace", "ClusterRole"}]
    namespaced = [
        o
        for o in namespaced
        if o["kind"] not in {"ClusterRoleBinding", "MutatingWebhookConfiguration"}
    ]
    assert {o["metadata"].get("namespace") for o in namespaced} == {NAMESPACE}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param(("spec", "replica"), 2, id="misspelt-field"),
        pytest.param(("spec", "replicas"), "two", id="wrong-type"),
    ],
)
def test_validation_rejects_a_broken_object(
    rendered: dict[str, list[dict[str, Any]]], path: tuple[str, str], value: object
) -> None:
    broken = copy.deepcopy(find(rendered["self-signed"], "Deployment", "kserve-cache-webhook"))
    broken[path[0]][path[1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


def test_crd_schema_rejects_a_misplaced_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    cert = copy.deepcopy(find(rendered["cert-manager"], "Certificate", "kserve-cache-webhook"))
    cert["spec"]["dnsName"] = cert["spec"].pop("dnsNames")
    with pytest.raises(jsonschema.ValidationError):
        validate(cert)


@pytest.mark.parametrize(
    ("label", "obj"), [pytest.param(*item, id=item[0]) for item in example_objects()]
)
def test_examples_validate(label: str, obj: dict[str, Any]) -> None:
    validate(obj)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_webhook_configuration(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    hook = webhook(rendered[overlay])
    assert hook["name"] == "pods.cache.kserve.io"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["clientConfig"]["service"] == {
        "name": WEBHOOK_SERVICE,
        "namespace": NAMESPACE,
        "path": "/mutate",
        "port": 443,
    }
    assert hook["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert hook["objectSelector"] == {
        "matchExpressions": [
            {"key": names.COMPONENT_LABEL, "operator": "In", "values": [names.PREDICTOR]},
            {"key": names.ISVC_LABEL, "operator": "Exists"},
        ]
    }
    (excluded,) = hook["namespaceSelector"]["matchExpressions"]
    assert excluded["key"] == "kubernetes.io/metadata.name"
    assert excluded["operator"] == "NotIn"
    assert set(excluded["values"]) == {"kube-system", "kube-public", "kube-node-lease", NAMESPACE}
    assert hook["failurePolicy"] == "Ignore"
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["sideEffects"] == "None"
    assert hook["timeoutSeconds"] == 5
    assert hook["matchPolicy"] == "Equivalent"


def test_webhook_is_called_after_kserve(rendered: dict[str, list[dict[str, Any]]]) -> None:
    # The API server calls mutating webhook configurations in name order.
    (kserve,) = yaml.safe_load_all(KSERVE_WEBHOOK.read_text())
    ours = find(rendered["self-signed"], "MutatingWebhookConfiguration", "kserve-cache")
    assert sorted([ours["metadata"]["name"], kserve["metadata"]["name"]]) == [
        kserve["metadata"]["name"],
        ours["metadata"]["name"],
    ]
    # Every pod we select is a pod KServe's pod mutator selects too (it needs the isvc label).
    kserve_pods = next(h for h in kserve["webhooks"] if h["name"].endswith("pod-mutator"))
    ours_keys = {e["key"] for e in webhook([ours])["objectSelector"]["matchExpressions"]}
    assert {e["key"] for e in kserve_pods["objectSelector"]["matchExpressions"]} <= ours_keys


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_reaches_the_container(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    service = find(objects, "Service", WEBHOOK_SERVICE)
    (port,) = service["spec"]["ports"]
    assert port["port"] == webhook(objects)["clientConfig"]["service"]["port"] == 443
    (container_port,) = container(objects)["ports"]
    assert container_port == {"name": "https", "containerPort": 8443, "protocol": "TCP"}
    assert port["targetPort"] in (container_port["name"], container_port["containerPort"])
    template_labels = find(objects, "Deployment", WEBHOOK_SERVICE)["spec"]["template"]["metadata"][
        "labels"
    ]
    assert service["spec"]["selector"].items() <= template_labels.items()
    pdb = find(objects, "PodDisruptionBudget", WEBHOOK_SERVICE)
    assert pdb["spec"]["selector"]["matchLabels"].items() <= template_labels.items()


def test_deployment_security_context(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["self-signed"]
    pod = pod_spec(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(objects)["securityContext"]
    assert security["runAsNonRoot"] is True
    assert isinstance(security["runAsUser"], int)
    assert security["runAsUser"] == 65532
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod.get("hostNetwork", False) is False
    namespace = find(objects, "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_deployment_availability(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["self-signed"]
    deployment = find(objects, "Deployment", WEBHOOK_SERVICE)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = pod_spec(objects)
    spread_keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert "kubernetes.io/hostname" in spread_keys
    pdb = find(objects, "PodDisruptionBudget", WEBHOOK_SERVICE)
    assert pdb["spec"]["minAvailable"] == 1
    main = container(objects)
    assert main["livenessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": "https",
        "scheme": "HTTPS",
    }
    assert main["readinessProbe"]["httpGet"] == {
        "path": "/readyz",
        "port": "https",
        "scheme": "HTTPS",
    }
    assert main["resources"]["requests"]
    assert main["resources"]["limits"]
    drain = main["lifecycle"]["preStop"]["sleep"]["seconds"]
    timeout = webhook(objects)["timeoutSeconds"]
    # Endpoints drain during preStop, then calls in flight (<= timeoutSeconds) finish.
    assert pod["terminationGracePeriodSeconds"] > drain + timeout


def test_deployment_args_are_a_valid_serve_command(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["self-signed"]
    main = container(objects)
    args = build_parser().parse_args(main["args"])
    assert args.command == "serve"
    assert args.host == "0.0.0.0"  # noqa: S104 - a pod listens on its own IP
    assert args.port == main["ports"][0]["containerPort"]
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    # Directories, not subPath: the kubelet only updates files of whole-volume mounts.
    assert all("subPath" not in m for m in mounts.values())
    for path, volume in ((args.cert_file, "tls"), (args.key_file, "tls"), (args.config, "config")):
        assert str(path.parent) == mounts[volume]["mountPath"]
        assert mounts[volume]["readOnly"] is True
    assert volumes["tls"]["secret"]["secretName"] == "kserve-cache-webhook-tls"
    assert args.cert_file.name == certs.CERT_FILE
    assert args.key_file.name == certs.KEY_FILE
    configmap = find(objects, "ConfigMap", volumes["config"]["configMap"]["name"])
    assert args.config.name in configmap["data"]


def _config_text(objects: list[dict[str, Any]]) -> str:
    text: str = find(objects, "ConfigMap", "kserve-cache-config")["data"]["config.yaml"]
    return text


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_holds_the_documented_defaults(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    text = _config_text(rendered[overlay])
    config = parse_config(text, source="kserve-cache-config/config.yaml")
    assert config == ClusterConfig()
    data = yaml.safe_load(text)
    assert set(data) == set(ClusterConfig.model_fields)
    # The fetcher image is named by the Deployment (KSERVE_CACHE_FETCHER_IMAGE), so that a
    # kustomize `images:` entry changes it; the file shows it commented out.
    assert set(data["initContainer"]) == set(InitContainerTemplate.model_fields) - {"image"}
    assert "  # image: ghcr.io/kserve-cache/kserve-cache-fetcher:" in text
    # Every key is documented: a comment line right above it, or on the line itself.
    lines = text.splitlines()
    keys = [*ClusterConfig.model_fields, *InitContainerTemplate.model_fields]
    for key in [k for k in keys if k != "image"]:
        (index,) = [i for i, line in enumerate(lines) if re.match(rf"\s*{key}:", line)]
        assert lines[index - 1].strip().startswith("#") or "#" in lines[index], key


def test_rbac_is_minimal(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["self-signed"]
    role = find(objects, "ClusterRole", "kserve-cache")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
        {
            "apiGroups": [""],
            "resources": ["persistentvolumeclaims"],
            "verbs": ["get", "list", "watch"],
        },
    ]
    assert not [o for o in objects if o["kind"] in {"Role", "RoleBinding"}]
    binding = find(objects, "ClusterRoleBinding", "kserve-cache")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": pod_spec(objects)["serviceAccountName"],
            "namespace": NAMESPACE,
        }
    ]
    find(objects, "ServiceAccount", pod_spec(objects)["serviceAccountName"])


def test_cert_manager_overlay_is_wired(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["cert-manager"]
    config = find(objects, "MutatingWebhookConfiguration", "kserve-cache")
    source = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    namespace, name = source.split("/")
    serving = find(objects, "Certificate", name)
    assert serving["metadata"]["namespace"] == namespace
    tls_volume = next(v for v in pod_spec(objects)["volumes"] if v["name"] == "tls")
    assert serving["spec"]["secretName"] == tls_volume["secret"]["secretName"]
    # The same names `kserve-cache certs` puts in its certificate.
    assert serving["spec"]["dnsNames"] == list(
        certs.service_dns_names(WEBHOOK_SERVICE, namespace=NAMESPACE)
    )
    assert "server auth" in serving["spec"]["usages"]
    # serving cert <- CA issuer <- CA certificate <- self-signed issuer
    ca_issuer = find(objects, "Issuer", serving["spec"]["issuerRef"]["name"])
    ca_cert = next(
        o
        for o in objects
        if o["kind"] == "Certificate"
        and o["spec"]["secretName"] == ca_issuer["spec"]["ca"]["secretName"]
    )
    assert ca_cert["spec"]["isCA"] is True
    root = find(objects, "Issuer", ca_cert["spec"]["issuerRef"]["name"])
    assert root["spec"] == {"selfSigned": {}}


def test_self_signed_overlay_leaves_the_bundle_to_certs(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["self-signed"]
    config = find(objects, "MutatingWebhookConfiguration", "kserve-cache")
    assert "cert-manager.io/inject-ca-from" not in config["metadata"].get("annotations", {})
    assert "caBundle" not in webhook(objects)["clientConfig"]
    assert not [o for o in objects if o["apiVersion"].startswith("cert-manager.io/")]
    # The certs command's defaults name this Service.
    parsed = build_parser().parse_args(["certs"])
    assert (parsed.service, parsed.namespace) == (WEBHOOK_SERVICE, NAMESPACE)


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def _stages(dockerfile: str) -> dict[str, str]:
    """Stage name -> its text."""
    parts = re.split(
        r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", dockerfile, flags=re.MULTILINE | re.IGNORECASE
    )
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_images_and_ports_agree(rendered: dict[str, list[dict[str, Any]]]) -> None:
    dockerfile = _dockerfile()
    stages = _stages(dockerfile)
    skaffold = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    tag = skaffold["build"]["tagPolicy"]["envTemplate"]["template"]
    artifacts = {a["docker"]["target"]: a for a in skaffold["build"]["artifacts"]}
    assert set(artifacts) == {"webhook", "fetcher"} <= set(stages)
    for artifact in artifacts.values():
        assert artifact["docker"]["dockerfile"] == "Dockerfile"
    webhook_image = f"{artifacts['webhook']['image']}:{tag}"
    fetcher_image = f"{artifacts['fetcher']['image']}:{tag}"
    for overlay in OVERLAYS:
        objects = rendered[overlay]
        assert container(objects)["image"] == webhook_image
        config = parse_config(_config_text(objects))
        assert config.initContainer.image == fetcher_image
        assert ClusterConfig().initContainer.image == fetcher_image
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(rf'^version = "{re.escape(tag)}"$', pyproject, flags=re.MULTILINE)
    # Ports and user.
    (exposed,) = re.findall(r"^EXPOSE\s+(\d+)", stages["webhook"], flags=re.MULTILINE)
    main = container(rendered["self-signed"])
    assert int(exposed) == main["ports"][0]["containerPort"]
    cmd = re.search(r"^CMD\s+(\[.*\])", stages["webhook"], flags=re.MULTILINE)
    assert cmd is not None
    assert build_parser().parse_args(yaml.safe_load(cmd.group(1))).port == int(exposed)
    for target in ("webhook", "fetcher"):
        (user,) = re.findall(r"^USER\s+(\S+)", stages[target], flags=re.MULTILINE)
        assert (
            user
            == f"{main['securityContext']['runAsUser']}:{main['securityContext']['runAsGroup']}"
        )
    # Pinned slim base for every stage.
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)", dockerfile, flags=re.MULTILINE)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base)
    bases = set(re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.MULTILINE))
    assert bases == {"${PYTHON_IMAGE}", "runtime"}
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\} AS runtime$", dockerfile, flags=re.MULTILINE)
    # Skaffold deploys the overlays that exist.
    paths = skaffold["manifests"]["kustomize"]["paths"]
    profiles = {p["name"]: p["manifests"]["kustomize"]["paths"] for p in skaffold["profiles"]}
    assert paths == ["manifests/overlays/self-signed"]
    assert profiles["cert-manager"] == ["manifests/overlays/cert-manager"]
    assert skaffold["portForward"][0]["port"] == 443


def test_final_images_have_no_build_tools() -> None:
    stages = _stages(_dockerfile())
    assert "python -m build" in stages["builder"]
    for target in ("runtime", "webhook", "fetcher"):
        code = "\n".join(
            line for line in stages[target].splitlines() if not line.lstrip().startswith("#")
        )
        assert not re.search(r"apt-get|apk |gcc|build-essential|-m build|install build", code)
        # The wheel comes from the builder through a bind mount, not a layer of its own.
        if target != "runtime":
            assert "--mount=type=bind,from=builder" in code
            assert "COPY --from=builder" not in code


def _namespaces() -> list[dict[str, Any]]:
    return [o for _, o in example_objects() if o["kind"] == "Namespace"]


@pytest.mark.parametrize(
    "namespace", [pytest.param(n, id=n["metadata"]["name"]) for n in _namespaces()]
)
def test_namespace_policy_examples_resolve_cleanly(namespace: dict[str, Any]) -> None:
    annotations = namespace["metadata"]["annotations"]
    policy = resolve_policy(
        cluster=ClusterConfig(),
        namespace_annotations=annotations,
        pod_annotations={},
        namespace=namespace["metadata"]["name"],
    )
    assert policy.warnings == ()
    assert policy.mode == PolicyMode(annotations[names.POLICY])
    # A pod that says nothing is cached only where the namespace turns the cache on.
    assert policy.cache is (policy.mode in {PolicyMode.DEFAULT_ON, PolicyMode.FORCED})
    if names.PVC in annotations:
        assert policy.pvc == annotations[names.PVC]


def test_namespace_examples_cover_every_policy() -> None:
    modes = {n["metadata"]["annotations"][names.POLICY] for n in _namespaces()}
    assert modes == {mode.value for mode in PolicyMode}


def test_inference_service_example_opts_in() -> None:
    (isvc,) = [o for _, o in example_objects() if o["kind"] == "InferenceService"]
    assert isvc["metadata"]["annotations"][names.ENABLED] == "true"
    assert isvc["spec"]["predictor"]["model"]["storageUri"]


def test_pvc_examples_are_rwx_on_their_storage_class() -> None:
    for path in sorted((MANIFESTS / "examples").glob("pvc-*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        (storage_class,) = [d for d in docs if d["kind"] == "StorageClass"]
        (claim,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"], path.name
        assert claim["spec"]["storageClassName"] == storage_class["metadata"]["name"]
        assert claim["metadata"]["name"] == ClusterConfig().pvc
    provisioners = {
        d["provisioner"]
        for path in (MANIFESTS / "examples").glob("pvc-*.yaml")
        for d in yaml.safe_load_all(path.read_text())
        if d and d["kind"] == "StorageClass"
    }
    assert provisioners == {"nfs.csi.k8s.io", "efs.csi.aws.com"}


def _job_pod(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    pod: dict[str, Any] = spec["template"]["spec"]
    return pod


@pytest.mark.parametrize(
    ("file", "command", "image"),
    [
        pytest.param("gc-cronjob.yaml", "gc", "ghcr.io/kserve-cache/kserve-cache:0.1.0", id="gc"),
        pytest.param("warm-job.yaml", "warm", ClusterConfig().initContainer.image, id="warm"),
    ],
)
def test_job_examples_run_valid_commands(
    tmp_path: Path, file: str, command: str, image: str
) -> None:
    docs = [d for d in yaml.safe_load_all((MANIFESTS / "examples" / file).read_text()) if d]
    job = next(d for d in docs if d["kind"] in {"Job", "CronJob"})
    pod = _job_pod(job)
    (main,) = pod["containers"]
    assert main["image"] == image
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == ClusterConfig().pvc
    # --cache-root must exist when parsed: stand the mounted volume in with a folder here.
    local = [str(tmp_path) if a == mounts["cache"]["mountPath"] else a for a in main["args"]]
    assert local != main["args"]
    args = build_parser().parse_args(local)
    assert args.command == command
    assert pod["securityContext"]["fsGroup"] == ClusterConfig().fsGroup
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    if command == "gc":
        role = next(d for d in docs if d["kind"] == "ClusterRole")
        assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_admits_only_the_webhook_port(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    policy = find(objects, "NetworkPolicy", "kserve-cache-webhook")
    template = find(objects, "Deployment", "kserve-cache-webhook")["spec"]["template"]
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected.items() <= template["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports") or []}
    assert [p["port"] for p in rule["ports"]] == ["https"]
    assert "https" in ports
    assert rule["from"], "an empty from would admit every pod"
