"""Every golden case through a real-shaped admission chain, with ours sorted after KServe's
webhook (the shipped name) and before every webhook, with and without an Istio sidecar: the
pod ends valid, cached exactly when ours alone would cache it, and with every other plugin's
change intact."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.chain.plugins import ISTIO_LABEL, OURS, chain, containers, ours
from tests.chain.simulator import Mutator, admit
from tests.golden_cases import Case, load_cases
from tests.podrules import pod_rule_errors, schema_errors
from webhook import kserve, names
from webhook.clusterconfig import ClusterConfig
from webhook.review import decide
from webhook.selection import find_init_container, is_ours

CASES = load_cases()


def expected_cached(case: Case) -> bool:
    decision = decide(
        kserve.pod_mutator(case.pod),
        namespace=case.namespace,
        config=case.config,
        namespace_annotations=case.namespace_annotations,
    )
    return decision.kind in ("mutated", "unchanged")


def with_istio(pod: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(pod)
    out.setdefault("metadata", {}).setdefault("labels", {})[ISTIO_LABEL] = "true"
    return out


@pytest.mark.parametrize("istio", [False, True], ids=["plain", "istio"])
@pytest.mark.parametrize("ours_first", [False, True], ids=["after-kserve", "first"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden_case_through_the_chain(case: Case, ours_first: bool, istio: bool) -> None:
    pod = with_istio(case.pod) if istio else case.pod
    in_tree, webhooks, validators = chain(
        case.config, case.view, case.namespace, ours_first=ours_first
    )
    outcome = admit(pod, in_tree=in_tree, webhooks=webhooks, validators=validators)
    final = outcome.pod
    assert outcome.errors == [], outcome.calls
    assert pod_rule_errors(final) == []
    if case.schema_valid:
        assert schema_errors(final) is None

    status = (final.get("metadata") or {}).get("annotations", {}).get(names.STATUS)
    initializer = find_init_container(final, names.STORAGE_INITIALIZER)
    if expected_cached(case):
        assert status is not None, outcome.calls
        assert is_ours(initializer)
        assert initializer is not None
        # LimitRanger's default reached our container and stayed
        assert "ephemeral-storage" in initializer["resources"]["limits"]
        # a call on our own output after everyone else changed it changes nothing
        again = ours(case.config, case.view, case.namespace)(copy.deepcopy(final))
        assert again == final
        model_mounts = [
            m
            for c in final["spec"]["containers"]
            for m in c.get("volumeMounts") or []
            if m["mountPath"].rstrip("/") == names.MODEL_MOUNT_PATH
        ]
        assert model_mounts
        if json.loads(status)["mode"] == "mount":
            assert all(m["name"] == names.CACHE_VOLUME for m in model_mounts)
    else:
        assert status is None
        assert not is_ours(initializer)
    our_name = ("0-" if ours_first else "") + OURS
    assert 1 <= outcome.called(our_name) <= 2


def test_the_simulator_catches_a_mutator_that_re_renders_its_container() -> None:
    """The chain must be able to fail: a webhook that puts back its own template on every
    call (as ours did before) undoes AlwaysPullImages, LimitRanger and the policy engine."""
    case = next(c for c in CASES if c.name == "02-kserve-after-gs")
    in_tree, webhooks, validators = chain(case.config, case.view, case.namespace, ours_first=True)
    good = next(w for w in webhooks if w.name.endswith(OURS))
    template_init: dict[str, Any] = {}

    def rerender(pod: dict[str, Any]) -> dict[str, Any]:
        pod = good.mutate(pod)
        for position, container in enumerate(pod["spec"].get("initContainers") or []):
            if is_ours(container):
                if not template_init:
                    template_init.update(copy.deepcopy(container))
                pod["spec"]["initContainers"][position] = copy.deepcopy(template_init)
        return pod

    webhooks = [w for w in webhooks if w is not good] + [
        Mutator("zz-" + OURS, rerender, reinvoke=True)
    ]
    outcome = admit(case.pod, in_tree=in_tree, webhooks=webhooks, validators=validators)
    assert any(e.startswith(("AlwaysPullImages", "policy-engine")) for e in outcome.errors)


def test_kserve_sets_the_istio_uid_on_our_container_and_it_stays() -> None:
    case = next(c for c in CASES if c.name == "01-kserve-before-gs")
    pod = copy.deepcopy(case.pod)
    pod["metadata"]["annotations"][names.KSERVE_INITIALIZER_UID] = "2000"
    pod["metadata"]["annotations"][names.ENABLED] = "true"
    in_tree, webhooks, validators = chain(ClusterConfig(), None, "default", ours_first=False)
    final = admit(pod, in_tree=in_tree, webhooks=webhooks, validators=validators).pod
    initializer = find_init_container(final, names.STORAGE_INITIALIZER)
    assert is_ours(initializer)
    assert initializer is not None
    assert initializer["securityContext"]["runAsUser"] == 2000
    assert all(c["imagePullPolicy"] == "Always" for c in containers(final))
