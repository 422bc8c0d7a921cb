"""manifests/monitoring: the dashboard JSON and the alert rules parse, and every metric (and
label) they name is one the webhook's /metrics or the cache exporter really exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import MANIFESTS, find, kustomize
from tests.docs.known import TARGET_LABELS, all_metrics

MONITORING = MANIFESTS / "monitoring"
METRIC = re.compile(r"\b(kserve_cache_[a-z0-9_]+)\b(\{[^}]*\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"')
AGGREGATION_LABELS = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
PROMQL_WORDS = {"by", "without", "offset", "and", "or", "unless", "bool", "on", "ignoring"}


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> dict[str, frozenset[str]]:
    return all_metrics(tmp_path_factory.mktemp("known"))


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    return [rule for group in doc["spec"]["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return data


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def expressions() -> list[pytest.ParameterSet]:
    return [
        *(pytest.param(r["expr"], id=f"rule-{r['alert']}-{i}") for i, r in enumerate(rules())),
        *(pytest.param(e, id=f"panel-{i}") for i, e in enumerate(dashboard_exprs())),
    ]


def scrape_jobs() -> set[str]:
    """The `job` label Prometheus Operator gives: the Service's name for a ServiceMonitor,
    `<namespace>/<name>` for a PodMonitor."""
    jobs = set()
    for doc in yaml.safe_load_all((MONITORING / "servicemonitor.yaml").read_text()):
        if doc["kind"] == "ServiceMonitor":
            jobs.add("kserve-cache-webhook")  # selects the webhook Service (checked below)
        elif doc["kind"] == "PodMonitor":
            jobs.add(f"{doc['metadata']['namespace']}/{doc['metadata']['name']}")
    return jobs


def balanced(expr: str) -> bool:
    depth = []
    pairs = {")": "(", "]": "[", "}": "{"}
    in_string = False
    for char in expr:
        if char == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif char in "([{":
            depth.append(char)
        elif char in pairs and (not depth or depth.pop() != pairs[char]):
            return False
    return not depth and not in_string


@pytest.mark.parametrize("expr", expressions())
def test_every_expression_names_real_metrics_and_labels(
    expr: str, known: dict[str, frozenset[str]]
) -> None:
    assert balanced(expr), expr
    found = METRIC.findall(expr)
    if not found:  # Prometheus' own `up` of one of our scrape jobs
        (job,) = re.fullmatch(r'up\{job="([^"]+)"\} == 0', expr).groups()  # type: ignore[union-attr]
        assert job in scrape_jobs(), f"no ServiceMonitor/PodMonitor makes job {job}"
        return
    labels_of_expr: set[str] = set()
    for name, matchers in found:
        assert name in known, f"{name} is not exposed by the webhook or the exporter"
        for label, _ in MATCHER.findall(matchers):
            assert label in known[name] | TARGET_LABELS, f"{name} has no label {label}"
        labels_of_expr |= known[name]
    for group in AGGREGATION_LABELS.findall(expr):
        for label in (x.strip() for x in group.split(",") if x.strip()):
            assert label in labels_of_expr | TARGET_LABELS | {"le"}, f"no label {label}: {expr}"


def test_the_rules_are_well_formed() -> None:
    doc = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["kind"] == "PrometheusRule"
    alerts = {r["alert"] for r in rules()}
    # what the issue asks for: webhook errors, certificate expiry, cache nearly full, hit rate
    assert {
        "KServeCacheWebhookErrors",
        "KServeCacheCertificateExpiresSoon",
        "KServeCacheNearlyFull",
        "KServeCacheHitRateCollapse",
    } <= alerts
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"])
        # templates only name labels the series can carry
        for ref in re.findall(r"\$labels\.(\w+)", json.dumps(rule["annotations"])):
            assert ref in TARGET_LABELS


def test_the_dashboard_is_importable() -> None:
    data = dashboard()
    assert data["uid"] == "kserve-cache"
    assert isinstance(data["schemaVersion"], int)
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in data["templating"]["list"]}
    assert variables == {"datasource", "namespace"}
    for panel in data["panels"]:
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            for var in re.findall(r"\$(\w+)", target["expr"]):
                assert var in variables, var
    titles = " ".join(p["title"].lower() for p in data["panels"])
    for topic in (
        "hit rate",
        "served from the cache vs downloaded",
        "entries",
        "free space",
        "fetch outcomes",
        "admissions",
        "latency",
    ):
        assert topic in titles, topic


def test_the_kustomization_renders(tmp_path: Path) -> None:
    objects = kustomize(MONITORING)
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert kinds == [
        ("ConfigMap", "kserve-cache-dashboard"),
        ("PodMonitor", "kserve-cache-stats"),
        ("PrometheusRule", "kserve-cache"),
        ("ServiceMonitor", "kserve-cache-webhook"),
    ]
    configmap = find(objects, "ConfigMap", "kserve-cache-dashboard")
    assert json.loads(configmap["data"]["grafana-dashboard.json"]) == dashboard()
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_the_monitors_select_what_the_manifests_label(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = kustomize(MONITORING)
    service_monitor = find(objects, "ServiceMonitor", "kserve-cache-webhook")
    service = find(rendered["self-signed"], "Service", "kserve-cache-webhook")
    wanted = service_monitor["spec"]["selector"]["matchLabels"]
    assert wanted.items() <= service["metadata"]["labels"].items()
    assert service_monitor["spec"]["endpoints"][0]["port"] in {
        p["name"] for p in service["spec"]["ports"]
    }
    pod_monitor = find(objects, "PodMonitor", "kserve-cache-stats")
    docs = [
        d
        for d in yaml.safe_load_all((MANIFESTS / "examples" / "stats-exporter.yaml").read_text())
        if d
    ]
    exporter = find(docs, "Deployment", "kserve-cache-stats")
    pod = exporter["spec"]["template"]
    assert (
        pod_monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    (container,) = pod["spec"]["containers"]
    port = pod_monitor["spec"]["podMetricsEndpoints"][0]["port"]
    assert port in {p["name"] for p in container["ports"]}
    # the exporter's arguments parse with the real parser and serve on that port, read-only
    from webhook.cli import build_parser

    args = build_parser().parse_args(
        [str(MANIFESTS) if a == "/cache" else a for a in container["args"]]
    )
    assert args.serve
    assert args.port == next(p["containerPort"] for p in container["ports"] if p["name"] == port)
    assert container["volumeMounts"][0]["readOnly"] is True
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["readOnly"] is True
