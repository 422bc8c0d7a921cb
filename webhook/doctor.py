"""`kserve-cache doctor` checks as pure functions: Kubernetes objects (dicts) and measured
figures in, named results (ok / warn / fail, a one-line hint, a docs link) out.

Gathering the facts (API calls, the file system, timing) lives in `webhook.cli.doctor`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from webhook import names
from webhook.clusterconfig import ClusterConfig, ConfigError, PolicyMode, parse_config

DOCS: Final = "docs/troubleshooting.md"
KSERVE_WEBHOOK_CONFIG: Final = "inferenceservice.serving.kserve.io"
KSERVE_POD_WEBHOOK: Final = "inferenceservice.kserve-webhook-server.pod-mutator"
CERT_WARN_DAYS: Final = 30


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


SYMBOLS: Final = {Status.OK: "✓", Status.WARN: "!", Status.FAIL: "✗"}


@dataclass(frozen=True)
class Result:
    """One named check. `hint` says what to do (empty when ok); `docs` is a link into docs/."""

    group: str
    name: str
    status: Status
    detail: str
    hint: str = ""
    docs: str = ""

    def to_dict(self) -> dict[str, str]:
        return {
            "group": self.group,
            "name": self.name,
            "status": self.status.value,
            "detail": self.detail,
            "hint": self.hint,
            "docs": self.docs,
        }


def doc(anchor: str) -> str:
    return f"{DOCS}#{anchor}"


@dataclass(frozen=True)
class Report:
    results: tuple[Result, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(r.status is not Status.FAIL for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        counts = {s.value: sum(1 for r in self.results if r.status is s) for s in Status}
        return {"ok": self.ok, "counts": counts, "checks": [r.to_dict() for r in self.results]}


def _result(
    group: str, name: str, status: Status, detail: str, hint: str = "", anchor: str = ""
) -> Result:
    return Result(group, name, status, detail, hint, doc(anchor or name))


# ---- the webhook ------------------------------------------------------------------------------

GROUP_WEBHOOK: Final = "webhook"


def check_deployment(deployment: Mapping[str, Any] | None, *, namespace: str, name: str) -> Result:
    check = "deployment-ready"
    if deployment is None:
        return _result(
            GROUP_WEBHOOK,
            check,
            Status.FAIL,
            f"Deployment {namespace}/{name} not found",
            "install it: kubectl apply -k manifests/overlays/cert-manager (or self-signed)",
        )
    spec = deployment.get("spec") or {}
    st = deployment.get("status") or {}
    wanted = int(spec.get("replicas", 1))
    ready = int(st.get("readyReplicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    detail = f"Deployment {namespace}/{name}: {ready}/{wanted} replicas ready"
    if wanted == 0 or ready == 0:
        return _result(
            GROUP_WEBHOOK,
            check,
            Status.FAIL,
            detail,
            f"kubectl -n {namespace} describe pods -l app.kubernetes.io/component=webhook "
            "(FailedMount: the TLS Secret is missing)",
        )
    if ready < wanted or updated < wanted:
        return _result(
            GROUP_WEBHOOK,
            check,
            Status.WARN,
            f"{detail}, {updated} up to date",
            f"a rollout is in progress or stuck: kubectl -n {namespace} rollout status "
            f"deploy/{name}",
        )
    return _result(GROUP_WEBHOOK, check, Status.OK, detail)


def tls_secret_name(deployment: Mapping[str, Any] | None, default: str) -> str:
    """The Secret the webhook container serves its certificate from (the `tls` volume)."""
    if deployment is None:
        return default
    volumes = ((deployment.get("spec") or {}).get("template") or {}).get("spec", {}).get(
        "volumes"
    ) or []
    for volume in volumes:
        secret = volume.get("secret") if isinstance(volume, dict) else None
        if volume.get("name") == "tls" and isinstance(secret, dict) and secret.get("secretName"):
            return str(secret["secretName"])
    return default


def _secret_bytes(secret: Mapping[str, Any], key: str) -> bytes | None:
    value = (secret.get("data") or {}).get(key)
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def serving_certificate(secret: Mapping[str, Any] | None) -> x509.Certificate | None:
    if secret is None:
        return None
    pem = _secret_bytes(secret, "tls.crt")
    if not pem:
        return None
    try:
        return x509.load_pem_x509_certificates(pem)[0]
    except ValueError:
        return None


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value.get_values_for_type(x509.DNSName))


def check_certificate(
    secret: Mapping[str, Any] | None,
    *,
    secret_ref: str,
    dns_name: str,
    now: dt.datetime,
    warn_days: int = CERT_WARN_DAYS,
    readable: bool = True,
) -> Result:
    check = "certificate-valid"
    if not readable:
        return _result(
            GROUP_WEBHOOK,
            check,
            Status.WARN,
            f"cannot read Secret {secret_ref} (forbidden)",
            "run doctor with credentials that may get Secrets in the webhook's namespace",
        )
    if secret is None:
        return _result(
            GROUP_WEBHOOK,
            check,
            Status.FAIL,
            f"Secret {secret_ref} not found",
            "create it: kserve-cache certs, then kubectl create secret tls (docs/install.md), "
            "or check the cert-manager Certificate",
        )
    cert = serving_certificate(secret)
    if cert is None:
        return _result(
            GROUP_WEBHOOK,
            check,
            Status.FAIL,
            f"Secret {secret_ref} has no readable PEM certificate in tls.crt",
            "recreate the Secret with kubectl create secret tls --cert … --key …",
        )
    key_pem = _secret_bytes(secret, "tls.key")
    try:
        key = load_pem_private_key(key_pem or b"", password=None)
    except (ValueError, TypeError):
        key = None
    if key is None or key.public_key() != cert.public_key():
        return _result(
            GROUP_WEBHOOK,
            check,
            Status.FAIL,
            f"Secret {secret_ref}: tls.key does not belong to tls.crt",
            "recreate the Secret from one pair (kserve-cache certs writes both)",
        )
    sans = _dns_names(cert)
    if dns_name not in sans:
        return _result(
            GROUP_WEBHOOK,
            check,
            Status.FAIL,
            f"certificate is for {', '.join(sans) or 'no DNS name'}, not {dns_name}",
            "make a certificate for the Service: kserve-cache certs --service … --namespace …",
        )
    not_after = cert.not_valid_after_utc
    if cert.not_valid_before_utc > now:
        return _result(
            GROUP_WEBHOOK,
            check,
            Status.FAIL,
            f"certificate not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z",
            "check the clock of the machine that made it",
        )
    left = not_after - now
    detail = f"certificate for {dns_name} valid until {not_after:%Y-%m-%d} ({left.days} days)"
    if left <= dt.timedelta(0):
        return _result(
            GROUP_WEBHOOK,
            check,
            Status.FAIL,
            f"certificate for {dns_name} expired on {not_after:%Y-%m-%d}",
            "rotate it: kserve-cache certs --patch-webhook kserve-cache, then the Secret",
        )
    if left < dt.timedelta(days=warn_days):
        return _result(
            GROUP_WEBHOOK,
            check,
            Status.WARN,
            detail,
            "rotate it soon: kserve-cache certs --patch-webhook kserve-cache, then the Secret "
            "(cert-manager renews on its own: check the Certificate is Ready)",
        )
    return _result(GROUP_WEBHOOK, check, Status.OK, detail)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert == ca:
        return True
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_ca_bundle(
    webhook_config: Mapping[str, Any] | None, cert: x509.Certificate | None, *, name: str
) -> Result:
    check = "ca-bundle"
    if webhook_config is None:
        return _result(
            GROUP_WEBHOOK,
            check,
            Status.FAIL,
            f"MutatingWebhookConfiguration {name} not found",
            "install the manifests (kubectl apply -k manifests/overlays/…)",
        )
    hooks = webhook_config.get("webhooks") or []
    if not hooks:
        return _result(
            GROUP_WEBHOOK, check, Status.FAIL, f"{name} has no webhooks", "reinstall the manifests"
        )
    injected = (webhook_config.get("metadata") or {}).get("annotations", {}) or {}
    fix = (
        "cert-manager's CA injector fills it: check the cainjector's logs"
        if "cert-manager.io/inject-ca-from" in injected
        else "kserve-cache certs --patch-webhook " + name
    )
    problems = []
    for hook in hooks:
        raw = ((hook.get("clientConfig") or {}).get("caBundle") or "").strip()
        if not raw:
            problems.append(f"webhook {hook.get('name')} has an empty caBundle")
            continue
        try:
            cas = x509.load_pem_x509_certificates(base64.b64decode(raw, validate=True))
        except (binascii.Error, ValueError):
            problems.append(f"webhook {hook.get('name')}: caBundle is not base64 PEM")
            continue
        if cert is not None and not any(_issued_by(cert, ca) for ca in cas):
            problems.append(
                f"webhook {hook.get('name')}: no CA in the caBundle ({len(cas)}) signed the "
                "serving certificate"
            )
    if problems:
        return _result(GROUP_WEBHOOK, check, Status.FAIL, "; ".join(problems), fix)
    if cert is None:
        return _result(
            GROUP_WEBHOOK,
            check,
            Status.WARN,
            f"caBundle set on {len(hooks)} webhook(s); not compared (serving certificate unknown)",
            "see certificate-valid",
        )
    return _result(
        GROUP_WEBHOOK,
        check,
        Status.OK,
        f"caBundle of {len(hooks)} webhook(s) trusts the serving certificate",
    )


def _pod_hooks(webhook_config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = []
    for hook in webhook_config.get("webhooks") or []:
        for rule in hook.get("rules") or []:
            if "pods" in (rule.get("resources") or []) or "*" in (rule.get("resources") or []):
                found.append(hook)
                break
    return found


def check_kserve_mutator(
    configs: Sequence[Mapping[str, Any]], *, config: ClusterConfig | None
) -> Result:
    check = "kserve-pod-mutator"
    for item in configs:
        meta = item.get("metadata") or {}
        if meta.get("name") == KSERVE_WEBHOOK_CONFIG and _pod_hooks(item):
            hook = _pod_hooks(item)[0]
            return _result(
                GROUP_WEBHOOK,
                check,
                Status.OK,
                f"KServe's pod mutator {hook.get('name')} is in {KSERVE_WEBHOOK_CONFIG}",
            )
    if config is not None and config.injectWithoutKServe:
        return _result(
            GROUP_WEBHOOK,
            check,
            Status.OK,
            "no KServe pod mutator; not needed (injectWithoutKServe: true)",
        )
    return _result(
        GROUP_WEBHOOK,
        check,
        Status.FAIL,
        f"no pod webhook in MutatingWebhookConfiguration {KSERVE_WEBHOOK_CONFIG}",
        "install KServe's webhook, or set injectWithoutKServe: true in the cluster config "
        "(every opted-in pod then waits as awaiting-kserve otherwise)",
    )


def check_order(
    configs: Sequence[Mapping[str, Any]], ours: Mapping[str, Any] | None, *, name: str
) -> Result:
    check = "webhook-order"
    if ours is None:
        return _result(GROUP_WEBHOOK, check, Status.FAIL, f"{name} not found", "install it")
    kserve = [
        str((c.get("metadata") or {}).get("name"))
        for c in configs
        if (c.get("metadata") or {}).get("name") == KSERVE_WEBHOOK_CONFIG and _pod_hooks(c)
    ]
    reinvoke = all(h.get("reinvocationPolicy") == "IfNeeded" for h in (ours.get("webhooks") or []))
    if not kserve:
        return _result(
            GROUP_WEBHOOK,
            check,
            Status.OK,
            f"{name}: no KServe pod mutator to sort after"
            + ("" if reinvoke else " (reinvocationPolicy is not IfNeeded)"),
        )
    if name > kserve[0]:
        return _result(
            GROUP_WEBHOOK, check, Status.OK, f"{name} sorts after {kserve[0]} (called after it)"
        )
    if reinvoke:
        return _result(
            GROUP_WEBHOOK,
            check,
            Status.WARN,
            f"{name} sorts before {kserve[0]}: each pod is skipped once (awaiting-kserve) and "
            "mutated on re-invocation",
            f"rename the configuration so it sorts after {kserve[0]} (e.g. kserve-cache)",
        )
    return _result(
        GROUP_WEBHOOK,
        check,
        Status.FAIL,
        f"{name} sorts before {kserve[0]} and is not re-invoked: opted-in pods are never cached",
        "set reinvocationPolicy: IfNeeded and name the configuration kserve-cache",
    )


def _has_expression(selector: Mapping[str, Any], key: str, operator: str) -> list[str] | None:
    for expr in selector.get("matchExpressions") or []:
        if expr.get("key") == key and expr.get("operator") == operator:
            return list(expr.get("values") or [])
    return None


def check_selectors(
    ours: Mapping[str, Any] | None, *, service: str, namespace: str, excluded: Iterable[str]
) -> Result:
    check = "webhook-selectors"
    if ours is None:
        return _result(GROUP_WEBHOOK, check, Status.FAIL, "configuration not found", "install it")
    fails: list[str] = []
    warns: list[str] = []
    for hook in ours.get("webhooks") or []:
        label = hook.get("name", "?")
        svc = (hook.get("clientConfig") or {}).get("service") or {}
        if (svc.get("name"), svc.get("namespace")) != (service, namespace):
            fails.append(
                f"{label} calls service {svc.get('namespace')}/{svc.get('name')}, not "
                f"{namespace}/{service}"
            )
        if svc.get("path", "/mutate") != "/mutate":
            fails.append(f"{label} calls path {svc.get('path')}, not /mutate")
        if not any(
            "pods" in (r.get("resources") or []) and "CREATE" in (r.get("operations") or [])
            for r in hook.get("rules") or []
        ):
            fails.append(f"{label} has no rule for pods CREATE")
        objects = hook.get("objectSelector") or {}
        component = (objects.get("matchLabels") or {}).get(names.COMPONENT_LABEL)
        values = _has_expression(objects, names.COMPONENT_LABEL, "In")
        if component != names.PREDICTOR and values != [names.PREDICTOR]:
            warns.append(
                f"{label}: objectSelector does not narrow to component=predictor (every pod "
                "creation calls the webhook)"
            )
        skipped = (
            _has_expression(
                hook.get("namespaceSelector") or {}, "kubernetes.io/metadata.name", "NotIn"
            )
            or []
        )
        missing = sorted({namespace, *excluded} - set(skipped))
        if missing:
            warns.append(f"{label}: namespaceSelector does not exclude {', '.join(missing)}")
        if hook.get("failurePolicy", "Fail") != "Ignore":
            warns.append(
                f"{label}: failurePolicy {hook.get('failurePolicy', 'Fail')}: a webhook outage "
                "blocks predictor pods"
            )
        if hook.get("reinvocationPolicy") != "IfNeeded":
            warns.append(f"{label}: reinvocationPolicy is not IfNeeded")
    if fails:
        return _result(
            GROUP_WEBHOOK, check, Status.FAIL, "; ".join(fails + warns), "reapply the manifests"
        )
    if warns:
        return _result(
            GROUP_WEBHOOK,
            check,
            Status.WARN,
            "; ".join(warns),
            "compare with manifests/base/mutatingwebhookconfiguration.yaml",
        )
    return _result(
        GROUP_WEBHOOK,
        check,
        Status.OK,
        f"pods CREATE, component=predictor, service {namespace}/{service}/mutate, fails open",
    )


def check_cluster_config(
    configmap: Mapping[str, Any] | None, *, ref: str
) -> tuple[Result, ClusterConfig | None]:
    check = "cluster-config"
    if configmap is None:
        return (
            _result(
                GROUP_WEBHOOK,
                check,
                Status.WARN,
                f"ConfigMap {ref} not found: built-in defaults",
                "the webhook runs on its built-in defaults unless --config names a file",
            ),
            ClusterConfig(),
        )
    text = (configmap.get("data") or {}).get("config.yaml")
    if text is None:
        return (
            _result(
                GROUP_WEBHOOK,
                check,
                Status.FAIL,
                f"ConfigMap {ref} has no config.yaml key",
                "the webhook mounts config.yaml from it: restore the key",
            ),
            None,
        )
    try:
        config = parse_config(text, source=f"{ref}:config.yaml")
    except ConfigError as exc:
        return (
            _result(
                GROUP_WEBHOOK,
                check,
                Status.FAIL,
                str(exc),
                "fix the file: the webhook keeps its last good config until then",
            ),
            None,
        )
    return (
        _result(
            GROUP_WEBHOOK,
            check,
            Status.OK,
            f"{ref}: policy {config.policy}, pvc {config.pvc}, mode {config.servingMode}",
        ),
        config,
    )


@dataclass(frozen=True)
class EndpointFacts:
    """What a TLS connection to the running webhook showed (`doctor --webhook-url`)."""

    url: str
    server_name: str
    error: str | None = None  # connection or TLS failure
    status: int | None = None  # of GET /readyz
    body: str = ""
    served_cert_der: bytes | None = None


def ca_bundle_pem(webhook_config: Mapping[str, Any] | None) -> bytes | None:
    """The first webhook's caBundle as PEM (what the API server trusts), if readable."""
    for hook in (webhook_config or {}).get("webhooks") or []:
        raw = ((hook.get("clientConfig") or {}).get("caBundle") or "").strip()
        if raw:
            try:
                return base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                return None
    return None


def check_endpoint(facts: EndpointFacts, secret_cert: x509.Certificate | None) -> Result:
    """The webhook as the API server meets it: TLS verified against the caBundle for the
    Service's name, `/readyz` ok, and the certificate served the one the Secret holds."""
    check = "webhook-endpoint"
    where = f"{facts.url} (as {facts.server_name})"
    if facts.error is not None:
        return _result(
            GROUP_WEBHOOK,
            check,
            Status.FAIL,
            f"{where}: {facts.error}",
            "the API server fails the same way and admits pods without the cache: see "
            "ca-bundle and certificate-valid",
        )
    if facts.status != 200:
        return _result(
            GROUP_WEBHOOK,
            check,
            Status.FAIL,
            f"{where}: /readyz answered {facts.status}: {facts.body.strip()[:200]}",
            "kubectl -n kserve-cache logs deploy/kserve-cache-webhook",
        )
    if secret_cert is not None and facts.served_cert_der is not None:
        served = x509.load_der_x509_certificate(facts.served_cert_der)
        if served != secret_cert:
            return _result(
                GROUP_WEBHOOK,
                check,
                Status.WARN,
                f"{where}: ready, but serves a certificate (serial {served.serial_number:x}) "
                f"other than the Secret's (serial {secret_cert.serial_number:x})",
                "the kubelet updates a mounted Secret within a minute or two and serve reloads "
                "it; if this lasts, restart the Deployment",
            )
    return _result(
        GROUP_WEBHOOK, check, Status.OK, f"{where}: TLS trusted by the caBundle, /readyz ok"
    )


FETCHER_ENV: Final = "KSERVE_CACHE_FETCHER_IMAGE"


def _tag(image: str) -> str | None:
    """The tag of an image reference (None for a digest or no tag)."""
    if "@" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def check_images(deployment: Mapping[str, Any] | None, config: ClusterConfig | None) -> Result:
    """Which images run the webhook and the injected init container, and whether they are the
    same version (the webhook computes cache keys, fetch refuses a key it computes otherwise)."""
    check = "images"
    containers = ((deployment or {}).get("spec") or {}).get("template", {}).get("spec", {}).get(
        "containers"
    ) or []
    if not containers:
        return _result(
            GROUP_WEBHOOK, check, Status.WARN, "no webhook Deployment to read the images from"
        )
    webhook = str(containers[0].get("image", ""))
    env = {e.get("name"): e.get("value") for e in containers[0].get("env") or []}
    if config is not None and "image" in config.initContainer.model_fields_set:
        fetcher, source = config.initContainer.image, "the ConfigMap's initContainer.image"
    elif env.get(FETCHER_ENV):
        fetcher, source = str(env[FETCHER_ENV]), f"the Deployment's {FETCHER_ENV}"
    else:
        fetcher = (config or ClusterConfig()).initContainer.image
        source = "the built-in default"
    detail = f"webhook {webhook}; fetcher {fetcher} (from {source})"
    webhook_tag, fetcher_tag = _tag(webhook), _tag(fetcher)
    if webhook_tag and fetcher_tag and webhook_tag != fetcher_tag:
        return _result(
            GROUP_WEBHOOK,
            check,
            Status.WARN,
            f"{detail}: different versions",
            "give both images the same version (one kustomize images: entry each): a fetcher "
            "of another version may compute other cache keys and refuse them",
        )
    return _result(GROUP_WEBHOOK, check, Status.OK, detail)


# ---- namespaces and their cache claims ---------------------------------------------------------

GROUP_NAMESPACES: Final = "namespaces"


def opted_in_namespaces(
    namespaces: Sequence[Mapping[str, Any]],
    claims: Sequence[Mapping[str, Any]],
    *,
    config: ClusterConfig,
    predictors: Sequence[Mapping[str, Any]] = (),
) -> list[tuple[str, str]]:
    """(namespace, claim name) for each namespace that opts in: a cache annotation that does not
    turn the cache off, (cluster policy not disabled) a claim of the configured name, or a
    KServe predictor pod the cache applies to (`enabled: "true"`, or a default-on/forced
    cluster policy the namespace does not turn off)."""
    found: dict[str, str] = {}
    off_namespaces: set[str] = set()
    pvc_of: dict[str, str] = {}
    for ns in namespaces:
        meta = ns.get("metadata") or {}
        notes = meta.get("annotations") or {}
        if notes.get(names.POLICY) == PolicyMode.DISABLED or notes.get(names.ENABLED) == "false":
            off_namespaces.add(str(meta.get("name")))
        if notes.get(names.PVC):
            pvc_of[str(meta.get("name"))] = str(notes[names.PVC])
    cluster_on = config.policy in (PolicyMode.DEFAULT_ON, PolicyMode.FORCED)
    for pod in predictors:
        meta = pod.get("metadata") or {}
        ns_name = str(meta.get("namespace"))
        if ns_name in config.excludedNamespaces or ns_name in off_namespaces:
            continue
        notes = meta.get("annotations") or {}
        if notes.get(names.ENABLED) == "true" or cluster_on:
            found.setdefault(ns_name, pvc_of.get(ns_name, config.pvc))
    for ns in namespaces:
        meta = ns.get("metadata") or {}
        name = str(meta.get("name"))
        if name in config.excludedNamespaces:
            continue
        notes = meta.get("annotations") or {}
        ours = {k: v for k, v in notes.items() if k.startswith(names.PREFIX)}
        off = ours.get(names.POLICY) == PolicyMode.DISABLED or ours.get(names.ENABLED) == "false"
        if ours and not off:
            found[name] = str(ours.get(names.PVC) or config.pvc)
    if config.policy is not PolicyMode.DISABLED:
        for claim in claims:
            meta = claim.get("metadata") or {}
            ns_name = str(meta.get("namespace"))
            if meta.get("name") == config.pvc and ns_name not in config.excludedNamespaces:
                found.setdefault(ns_name, config.pvc)
    return sorted(found.items())


def check_claim(claim: Mapping[str, Any] | None, *, namespace: str, name: str) -> list[Result]:
    ref = f"{namespace}/{name}"
    check = f"claim {ref}"
    if claim is None:
        return [
            _result(
                GROUP_NAMESPACES,
                check,
                Status.FAIL,
                f"PersistentVolumeClaim {ref} not found: pods there are admitted without the "
                "cache (pvc-missing)",
                "create it: manifests/examples/pvc-nfs.yaml or pvc-efs.yaml",
                "claim-exists",
            )
        ]
    out = []
    phase = (claim.get("status") or {}).get("phase", "Pending")
    if phase == "Bound":
        out.append(
            _result(GROUP_NAMESPACES, check, Status.OK, f"{ref} is Bound", "", "claim-bound")
        )
    else:
        out.append(
            _result(
                GROUP_NAMESPACES,
                check,
                Status.FAIL,
                f"{ref} is {phase}",
                f"kubectl -n {namespace} describe pvc {name}",
                "claim-bound",
            )
        )
    modes = (
        (claim.get("status") or {}).get("accessModes")
        or (claim.get("spec") or {}).get("accessModes")
        or []
    )
    # A read-only share (`kserve-cache share --read-only`) is ReadOnlyMany by design.
    shared = ((claim.get("metadata") or {}).get("annotations") or {}).get(
        "cache.kserve.io/share-mode"
    ) == "read-only" and "ReadOnlyMany" in modes
    if "ReadWriteMany" in modes or shared:
        out.append(
            _result(
                GROUP_NAMESPACES,
                f"access {ref}",
                Status.OK,
                f"{ref} is " + ("ReadOnlyMany (a read-only share)" if shared else "ReadWriteMany"),
                "",
                "claim-rwx",
            )
        )
    else:
        out.append(
            _result(
                GROUP_NAMESPACES,
                f"access {ref}",
                Status.FAIL,
                f"{ref} is {', '.join(modes) or 'without access modes'}, not ReadWriteMany: pods "
                "on other nodes cannot mount it",
                "use a storage class with ReadWriteMany (NFS, EFS, CephFS, Filestore, Azure Files)",
                "claim-rwx",
            )
        )
    return out


def check_fs_group_policy(
    *,
    namespace: str,
    claim_name: str,
    volume: Mapping[str, Any] | None,
    csi_driver: Mapping[str, Any] | None,
    fs_group: int,
    volume_readable: bool = True,
) -> Result:
    """What the kubelet does with the pod's fsGroup on this volume, and what that means."""
    check = f"fsgroup {namespace}/{claim_name}"
    anchor = "fsgroup-policy"
    if not volume_readable:
        return _result(
            GROUP_NAMESPACES,
            check,
            Status.WARN,
            "cannot read the PersistentVolume or CSIDriver (forbidden)",
            "run doctor with credentials that may get persistentvolumes and csidrivers",
            anchor,
        )
    if volume is None:
        return _result(
            GROUP_NAMESPACES,
            check,
            Status.WARN,
            "no PersistentVolume bound yet: fsGroup handling unknown",
            "check again once the claim is Bound",
            anchor,
        )
    spec = volume.get("spec") or {}
    writable = (
        f"the share must already be writable by group {fs_group} (or by uid 65532): "
        f"chgrp {fs_group} on the export and chmod 2775, or an EFS access point"
    )
    if "nfs" in spec:
        return _result(
            GROUP_NAMESPACES,
            check,
            Status.WARN,
            "in-tree NFS volume: the kubelet never applies fsGroup to it",
            writable,
            anchor,
        )
    csi = spec.get("csi")
    if not isinstance(csi, dict):
        kind = next((k for k in spec if isinstance(spec[k], dict) and k != "claimRef"), "unknown")
        return _result(
            GROUP_NAMESPACES,
            check,
            Status.WARN,
            f"{kind} volume (not CSI): fsGroup support depends on the plugin",
            writable,
            anchor,
        )
    driver = str(csi.get("driver"))
    if csi_driver is None:
        policy = "ReadWriteOnceWithFSType"
        source = f"no CSIDriver object for {driver}: the default policy"
    else:
        policy = str(
            (csi_driver.get("spec") or {}).get("fsGroupPolicy") or "ReadWriteOnceWithFSType"
        )
        source = f"CSIDriver {driver}"
    if policy == "File":
        return _result(
            GROUP_NAMESPACES,
            check,
            Status.OK,
            f"{source}: fsGroupPolicy File: the kubelet gives the volume to group {fs_group} "
            "(with OnRootMismatch only when the root's group differs)",
            "",
            anchor,
        )
    if policy == "None":
        meaning = "fsGroupPolicy None: fsGroup is never applied"
    else:
        meaning = (
            f"fsGroupPolicy {policy}: fsGroup is applied only to ReadWriteOnce volumes with an "
            "fsType, so not to this ReadWriteMany share"
        )
    return _result(GROUP_NAMESPACES, check, Status.WARN, f"{source}: {meaning}", writable, anchor)


# ---- a cache volume seen from a pod or a node ---------------------------------------------------

GROUP_VOLUME: Final = "volume"


@dataclass(frozen=True)
class RootFacts:
    """The cache root as the running process sees it."""

    path: str
    exists: bool
    is_dir: bool = False
    uid: int = 0
    gid: int = 0
    mode: int = 0
    writable: bool = False
    read_only_fs: bool = False
    euid: int = 0
    groups: tuple[int, ...] = ()


def check_root(facts: RootFacts, *, read_only: bool = False) -> Result:
    check = "root-permissions"
    if not facts.exists or not facts.is_dir:
        return _result(
            GROUP_VOLUME,
            check,
            Status.FAIL,
            f"{facts.path} is not a directory",
            "mount the cache claim there (or pass the right --cache-root)",
        )
    perms = stat.filemode(facts.mode)
    owner = f"{facts.path}: {perms} owner {facts.uid} group {facts.gid}"
    who = f"running as uid {facts.euid}, groups {','.join(map(str, facts.groups)) or '-'}"
    if read_only:
        return _result(
            GROUP_VOLUME, check, Status.OK, f"{owner}; {who}; read-only consumer: not written"
        )
    if facts.read_only_fs:
        return _result(
            GROUP_VOLUME,
            check,
            Status.FAIL,
            f"{owner}: the filesystem is mounted read-only",
            "mount the claim read-write in the init container (or use --read-only consumers)",
        )
    if not facts.writable:
        return _result(
            GROUP_VOLUME,
            check,
            Status.FAIL,
            f"{owner}; {who}: cannot create files here",
            f"chgrp {facts.groups[0] if facts.groups else 1000} {facts.path} && chmod 2775 "
            f"{facts.path} on the server (NFS/EFS ignore fsGroup)",
        )
    shared_group = facts.gid in facts.groups and bool(facts.mode & stat.S_IWGRP)
    if facts.euid != facts.uid and not shared_group:
        return _result(
            GROUP_VOLUME,
            check,
            Status.WARN,
            f"{owner}; {who}: writable, but not through the group",
            "pods with another uid will not be able to write: chgrp to the fsGroup, chmod 2775",
        )
    if not facts.mode & stat.S_ISGID and facts.euid != facts.uid:
        return _result(
            GROUP_VOLUME,
            check,
            Status.WARN,
            f"{owner}; {who}: no setgid bit, new folders take the creator's primary group",
            f"chmod g+s {facts.path}",
        )
    return _result(GROUP_VOLUME, check, Status.OK, f"{owner}; {who}: writable")


@dataclass(frozen=True)
class SpaceFacts:
    total_bytes: int
    free_bytes: int
    total_inodes: int
    free_inodes: int


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def check_space(facts: SpaceFacts, *, min_free_percent: float = 10.0) -> list[Result]:
    out = []
    pct = 100.0 * facts.free_bytes / facts.total_bytes if facts.total_bytes else 0.0
    detail = f"{_human(facts.free_bytes)} free of {_human(facts.total_bytes)} ({pct:.1f}%)"
    if facts.total_bytes and pct < min_free_percent:
        out.append(
            _result(
                GROUP_VOLUME,
                "free-space",
                Status.WARN if facts.free_bytes else Status.FAIL,
                detail,
                "run kserve-cache gc (or lower its budget), or grow the volume",
            )
        )
    else:
        out.append(_result(GROUP_VOLUME, "free-space", Status.OK, detail))
    if facts.total_inodes == 0:
        out.append(
            _result(
                GROUP_VOLUME,
                "free-inodes",
                Status.OK,
                "the filesystem reports no inode limit",
            )
        )
    else:
        ipct = 100.0 * facts.free_inodes / facts.total_inodes
        idetail = f"{facts.free_inodes:,} inodes free of {facts.total_inodes:,} ({ipct:.1f}%)"
        if ipct < min_free_percent:
            out.append(
                _result(
                    GROUP_VOLUME,
                    "free-inodes",
                    Status.WARN if facts.free_inodes else Status.FAIL,
                    idetail,
                    "models with many small files use inodes: run gc, or a filesystem with more",
                )
            )
        else:
            out.append(_result(GROUP_VOLUME, "free-inodes", Status.OK, idetail))
    return out


@dataclass(frozen=True)
class SpeedFacts:
    bytes: int
    write_seconds: float
    read_seconds: float
    metadata_ops: int
    metadata_seconds: float  # median per operation


def check_speed(
    facts: SpeedFacts, *, min_mib_per_s: float = 20.0, max_metadata_ms: float = 50.0
) -> list[Result]:
    mib = facts.bytes / (1024 * 1024)
    write = mib / facts.write_seconds if facts.write_seconds > 0 else float("inf")
    read = mib / facts.read_seconds if facts.read_seconds > 0 else float("inf")
    out = []
    detail = f"sequential write {write:.0f} MiB/s, read {read:.0f} MiB/s ({mib:.0f} MiB, fsync'd)"
    if min(write, read) < min_mib_per_s:
        out.append(
            _result(
                GROUP_VOLUME,
                "throughput",
                Status.WARN,
                detail,
                f"below {min_mib_per_s:.0f} MiB/s: copy mode and big models will be slow; check "
                "the share's throughput tier or network",
            )
        )
    else:
        out.append(_result(GROUP_VOLUME, "throughput", Status.OK, detail))
    ms = facts.metadata_seconds * 1000
    mdetail = f"median {ms:.2f} ms per create/stat/rename/unlink ({facts.metadata_ops} files)"
    if ms > max_metadata_ms:
        out.append(
            _result(
                GROUP_VOLUME,
                "metadata-latency",
                Status.WARN,
                mdetail,
                f"above {max_metadata_ms:.0f} ms: leases, hits and models with many files will "
                "be slow; check the NFS mount options (actimeo, nconnect)",
            )
        )
    else:
        out.append(_result(GROUP_VOLUME, "metadata-latency", Status.OK, mdetail))
    return out


def check_probe(report: Any | None, *, error: str | None = None) -> Result:
    """The capability probe (`webhook.cache.probe.probe_volume`): every failed check named."""
    if report is None:
        return _result(
            GROUP_VOLUME,
            "capability-probe",
            Status.WARN,
            f"capability probe not run: {error or 'not available'}",
            "run kserve-cache doctor from the fetcher image of this version",
        )
    checks = list(getattr(report, "checks", ()))
    failed = [c for c in checks if not c.ok and getattr(c, "required", True)]
    missing = [c for c in checks if not c.ok and not getattr(c, "required", True)]
    if failed:
        return _result(
            GROUP_VOLUME,
            "capability-probe",
            Status.FAIL,
            "; ".join(f"{c.name}: {c.detail}" for c in failed),
            "this filesystem lacks a guarantee the cache needs (fetch exits 9, unsafe-volume)",
        )
    if missing:
        return _result(
            GROUP_VOLUME,
            "capability-probe",
            Status.WARN,
            "optional: " + "; ".join(f"{c.name}: {c.detail}" for c in missing),
            "the cache works; features that need these (versioned entries) are off",
        )
    return _result(
        GROUP_VOLUME,
        "capability-probe",
        Status.OK,
        f"{len(checks)} checks passed: {', '.join(c.name for c in checks)}",
    )


ALL_CHECKS: Final = (
    "api-reachable",
    "deployment-ready",
    "certificate-valid",
    "ca-bundle",
    "webhook-order",
    "webhook-selectors",
    "kserve-pod-mutator",
    "cluster-config",
    "images",
    "webhook-endpoint",
    "claim-exists",
    "claim-bound",
    "claim-rwx",
    "fsgroup-policy",
    "capability-probe",
    "root-permissions",
    "free-space",
    "free-inodes",
    "throughput",
    "metadata-latency",
)
"""Every docs anchor a result can link to (the docs test checks each exists)."""
