"""Realistic AdmissionReviews for the benchmarks: the golden input pods, padded to 5-15 KB with
the data real predictor pods carry (env vars, labels, annotations, managedFields-like entries).

Only the golden cases that run under the default cluster config are used, so the server under
test needs no config file; their mix of outcomes (mutated, skipped) is reported with the figures.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.golden_cases import load_cases, make_review  # noqa: E402

MIN_BYTES = 5 * 1024
MAX_BYTES = 15 * 1024


@dataclass(frozen=True)
class Item:
    name: str
    namespace: str
    review: dict[str, Any]
    body: bytes


def _fields_v1(obj: Any, depth: int = 0) -> Any:
    """A managedFields `fieldsV1`-shaped tree for `obj` (what the API server stores)."""
    if isinstance(obj, dict) and depth < 6:
        return {f"f:{k}": _fields_v1(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list) and depth < 6:
        out: dict[str, Any] = {}
        for item in obj:
            if isinstance(item, dict) and "name" in item:
                out[f'k:{{"name":"{item["name"]}"}}'] = {".": {}, **_fields_v1(item, depth + 1)}
        return out
    return {}


def _managed_fields(pod: dict[str, Any]) -> list[dict[str, Any]]:
    meta = pod.get("metadata", {})
    tracked = {"spec": pod.get("spec", {}), "metadata": {"labels": meta.get("labels", {})}}
    return [
        {
            "manager": "kube-controller-manager",
            "operation": "Update",
            "apiVersion": "v1",
            "time": "2025-01-01T00:00:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": _fields_v1(tracked),
        }
    ]


def _pad(pod: dict[str, Any], *, target: int, rng: random.Random) -> dict[str, Any]:
    pod = json.loads(json.dumps(pod))
    meta = pod.setdefault("metadata", {})
    name = meta.get("name") or "predictor"
    meta.setdefault("generateName", f"{name}-predictor-00001-deployment-7d9f8c6b5-")
    labels = meta.setdefault("labels", {})
    labels.setdefault("app", f"{name}-predictor-00001")
    labels.setdefault("pod-template-hash", "7d9f8c6b5")
    labels.setdefault("serving.knative.dev/configuration", f"{name}-predictor")
    labels.setdefault("serving.knative.dev/revision", f"{name}-predictor-00001")
    labels.setdefault("serving.knative.dev/service", f"{name}-predictor")
    annotations = meta.setdefault("annotations", {})
    annotations.setdefault("autoscaling.knative.dev/class", "kpa.autoscaling.knative.dev")
    annotations.setdefault("autoscaling.knative.dev/min-scale", "0")
    annotations.setdefault("prometheus.io/scrape", "true")
    annotations.setdefault("prometheus.io/port", "8080")
    meta["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": f"{name}-predictor-00001-deployment-7d9f8c6b5",
            "uid": "5b0c6d53-6a1e-4a4f-9d3c-2f1f7c8b9e10",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    containers = pod.setdefault("spec", {}).setdefault("containers", [])
    target_container = containers[0] if containers else None
    index = 0
    while True:
        meta["managedFields"] = _managed_fields(pod)
        if len(json.dumps(pod, separators=(",", ":"))) >= target - 400:
            break
        if target_container is not None and index % 3 != 2:
            env = target_container.setdefault("env", [])
            env.append(
                {
                    "name": f"MODEL_SERVER_SETTING_{index:03d}",
                    "value": "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789-", k=40)),
                }
            )
        else:
            labels[f"team.example.com/attribute-{index:03d}"] = f"value-{rng.randrange(10**6)}"
        index += 1
    return pod


def load_items(seed: int = 8) -> list[Item]:
    """One padded AdmissionReview per usable golden case, 5-15 KB each."""
    rng = random.Random(seed)
    cases = [c for c in load_cases() if c.config_text is None and c.namespace_annotations is None]
    items = []
    for i, case in enumerate(cases):
        target = MIN_BYTES + (MAX_BYTES - MIN_BYTES) * i // max(1, len(cases) - 1)
        review = make_review(
            _pad(case.pod, target=target, rng=rng),
            namespace=case.namespace,
            uid=f"00000000-0000-4000-8000-{i:012d}",
        )
        body = json.dumps(review, separators=(",", ":")).encode()
        if not MIN_BYTES <= len(body) <= MAX_BYTES + 2048:
            raise RuntimeError(f"{case.name}: padded review is {len(body)} bytes")
        items.append(Item(case.name, case.namespace, review, body))
    return items


def outcome_mix(items: list[Item]) -> dict[str, int]:
    """How many of the items the core mutates, leaves unchanged or skips (and why)."""
    from webhook.clusterconfig import ClusterConfig
    from webhook.review import review_body

    config = ClusterConfig()
    mix: Counter[str] = Counter()
    for item in items:
        decision = review_body(item.review, config=config).decision
        mix[decision.kind if decision.reason is None else f"skipped:{decision.reason.value}"] += 1
    return dict(sorted(mix.items()))


if __name__ == "__main__":
    loaded = load_items()
    for it in loaded:
        print(f"{it.name:40s} {len(it.body):6d} bytes")
    print(outcome_mix(loaded))
