"""The cache claim check: WatchedNamespaces follows PersistentVolumeClaims with the real
`kubernetes` client against the fake API server, and `review()` skips a pod whose claim is
missing."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from prometheus_client import CollectorRegistry

from tests.fakekube import CLAIMS, FakeKube
from tests.golden_cases import make_review
from tests.watching import eventually, lookup, sample
from webhook import names
from webhook.clusterconfig import ClusterConfig
from webhook.namespaces import (
    ClaimInfo,
    WatchedNamespaces,
    namespace_source_from_environment,
)
from webhook.review import review_body

RWX = ("ReadWriteMany",)
POD = json.loads(
    (Path(__file__).parent / "golden" / "02-kserve-after-gs" / "input.json").read_text()
)  # a predictor pod after KServe's mutator, opted in


def claims(source: WatchedNamespaces, namespace: str) -> dict[str, ClaimInfo] | None:
    found = lookup(source, namespace).claims
    return None if found is None else dict(found)


@pytest.fixture
def make_watcher(
    kube: FakeKube, tmp_path: Path, registry: CollectorRegistry
) -> Iterator[Callable[..., WatchedNamespaces]]:
    configuration = client.Configuration()
    config.load_kube_config(
        config_file=str(kube.write_kubeconfig(tmp_path / "kubeconfig")),
        client_configuration=configuration,
    )
    made: list[WatchedNamespaces] = []

    def make(**options: Any) -> WatchedNamespaces:
        settings: dict[str, Any] = {
            "watch_timeout": 2,
            "request_timeout": 2.0,
            "connect_timeout": 0.5,
            "backoff_initial": 0.02,
            "backoff_max": 0.1,
        }
        settings.update(options)
        watcher = WatchedNamespaces(configuration, registry=registry, **settings)
        made.append(watcher)
        return watcher

    yield make
    for watcher in made:
        watcher.stop()


def started(make: Callable[..., WatchedNamespaces], **options: Any) -> WatchedNamespaces:
    watcher = make(**options)
    watcher.start()
    eventually(lambda: watcher.synced and watcher.claims_known, what="namespaces and claims")
    return watcher


def test_claims_are_listed_per_namespace(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces], registry: CollectorRegistry
) -> None:
    kube.add_namespace("team-a")
    kube.add_namespace("team-b")
    kube.add_claim("team-a", "cache")
    kube.add_claim("team-a", "scratch", access_modes=("ReadWriteOnce",), phase="Pending")
    kube.add_claim("team-c", "cache", access_modes=("ReadWriteOnce", "ReadWriteMany"))
    watcher = make_watcher()
    assert not watcher.claims_known
    watcher.start()
    eventually(lambda: watcher.synced and watcher.claims_known, what="claims synced")

    assert claims(watcher, "team-a") == {
        "cache": ClaimInfo(RWX, "Bound"),
        "scratch": ClaimInfo(("ReadWriteOnce",), "Pending"),
    }
    assert claims(watcher, "team-b") == {}  # known, and empty: not None
    assert watcher.claims_of("team-c") == {
        "cache": ClaimInfo(("ReadWriteOnce", "ReadWriteMany"), "Bound")
    }
    assert sample(registry, "kserve_cache_claims_cached") == 3
    assert sample(registry, "kserve_cache_claims_synced") == 1
    assert kube.lists(CLAIMS) == 1


def test_claim_events_change_the_answer(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces], registry: CollectorRegistry
) -> None:
    kube.add_namespace("ml")
    watcher = started(make_watcher)
    assert claims(watcher, "ml") == {}

    kube.add_claim("ml", "cache", phase="Pending")
    eventually(lambda: claims(watcher, "ml") == {"cache": ClaimInfo(RWX, "Pending")}, what="ADDED")
    kube.modify_claim("ml", "cache", phase="Bound", access_modes=("ReadWriteOnce",))
    eventually(
        lambda: claims(watcher, "ml") == {"cache": ClaimInfo(("ReadWriteOnce",), "Bound")},
        what="MODIFIED",
    )
    # held by its finalizer: still listed by the API server, but no new pod may use it
    kube.modify_claim("ml", "cache", deleting=True)
    eventually(lambda: claims(watcher, "ml") == {}, what="deletionTimestamp set")
    assert sample(registry, "kserve_cache_claims_cached") == 0

    kube.add_claim("ml", "other")
    eventually(lambda: "other" in (claims(watcher, "ml") or {}), what="second ADDED")
    kube.delete_claim("ml", "other")
    eventually(lambda: claims(watcher, "ml") == {}, what="DELETED")
    assert kube.lists(CLAIMS) == 1  # events alone, no re-list


def test_410_lists_the_claims_again(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces], registry: CollectorRegistry
) -> None:
    kube.add_claim("ml", "goes")
    kube.add_claim("ml", "stays", phase="Pending")
    watcher = started(make_watcher, watch_timeout=1)

    # Changes the watch never delivers, then the history is compacted: only a re-list sees them.
    kube.delete_claim("ml", "goes", quiet=True)
    kube.modify_claim("ml", "stays", phase="Bound", quiet=True)
    kube.add_claim("ml", "arrived", quiet=True)
    kube.compact()

    expected = {"arrived": ClaimInfo(RWX, "Bound"), "stays": ClaimInfo(RWX, "Bound")}
    eventually(lambda: claims(watcher, "ml") == expected, what="re-list after 410")
    assert sample(registry, "kserve_cache_claim_watch_restarts_total", reason="gone") >= 1
    assert kube.lists(CLAIMS) >= 2

    # an ERROR event with 410 on a live watch does the same, and the watch goes on afterwards
    kube.gone_next_watch(resource=CLAIMS)
    before = sample(registry, "kserve_cache_claim_watch_restarts_total", reason="gone")
    eventually(
        lambda: sample(registry, "kserve_cache_claim_watch_restarts_total", reason="gone") > before,
        what="a 410 ERROR event",
    )
    kube.add_claim("ml", "after")
    eventually(lambda: "after" in (claims(watcher, "ml") or {}), what="ADDED after the 410")


def test_forbidden_claims_turn_the_check_off_and_namespace_policy_goes_on(
    kube: FakeKube,
    make_watcher: Callable[..., WatchedNamespaces],
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    kube.add_namespace("ml", annotations={names.POLICY: "forced"})
    kube.add_claim("ml", "cache")
    kube.forbid(CLAIMS)
    watcher = make_watcher()
    with caplog.at_level(logging.INFO, logger="webhook.namespaces"):
        watcher.start()
        eventually(
            lambda: (
                sample(registry, "kserve_cache_claim_watch_restarts_total", reason="forbidden") >= 3
            ),
            what="several refused lists",
        )
        view = lookup(watcher, "ml")
        assert watcher.synced  # readiness does not wait for claims
        assert dict(view.annotations or {}) == {names.POLICY: "forced"}
        assert view.claims is None
        assert view.warning is None
        assert sample(registry, "kserve_cache_claims_synced") == 0
        forbidden = [
            r
            for r in caplog.records
            if r.levelno == logging.WARNING and "claim list/watch forbidden" in r.getMessage()
        ]
        assert len(forbidden) == 1
        assert "persistentvolumeclaims" in forbidden[0].getMessage()
        assert "cache claim check off" in forbidden[0].getMessage()

        # the admin grants the permission: the check turns on without a restart
        kube.forbid(CLAIMS, forbidden=False)
        eventually(lambda: claims(watcher, "ml") == {"cache": ClaimInfo(RWX, "Bound")}, what="on")
    assert "claim list/watch allowed again" in caplog.text
    assert sample(registry, "kserve_cache_claims_synced") == 1


def test_claims_unknown_while_the_server_is_down(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces], registry: CollectorRegistry
) -> None:
    kube.add_namespace("ml")
    watcher = started(make_watcher)
    assert claims(watcher, "ml") == {}
    kube.stop()
    # a claim created meanwhile would be missed: unknown, not "missing"
    eventually(lambda: lookup(watcher, "ml").claims is None, what="claims unknown")
    assert sample(registry, "kserve_cache_claims_synced") == 0
    kube.add_claim("ml", "cache")
    kube.start()
    eventually(lambda: claims(watcher, "ml") == {"cache": ClaimInfo(RWX, "Bound")}, what="back")
    assert sample(registry, "kserve_cache_claims_synced") == 1
    assert sample(registry, "kserve_cache_claim_watch_restarts_total", reason="error") >= 1


def test_permission_revoked_while_running(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces]
) -> None:
    kube.add_claim("ml", "cache")
    watcher = started(make_watcher)
    kube.forbid(CLAIMS)
    kube.drop_connections()  # the open watch ends; the next list is refused
    eventually(lambda: lookup(watcher, "ml").claims is None, what="claims unknown")
    assert watcher.synced


def test_claim_watch_off(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces], registry: CollectorRegistry
) -> None:
    kube.add_namespace("ml", annotations={names.PVC: "cache"})
    watcher = make_watcher(watch_claims=False)
    watcher.start()
    eventually(lambda: watcher.synced, what="first list")
    view = lookup(watcher, "ml")
    assert dict(view.annotations or {}) == {names.PVC: "cache"}
    assert view.claims is None
    assert not watcher.claims_known
    assert not any("persistentvolumeclaims" in r.path for r in kube.requests)
    assert sample(registry, "kserve_cache_claims_synced") == 0


# through review() ----------------------------------------------------------------------------


def served(watcher: WatchedNamespaces, namespace: str) -> dict[str, Any]:
    result = review_body(
        make_review(POD, namespace=namespace),
        config=ClusterConfig(),
        namespace=lookup(watcher, namespace),
    )
    response: dict[str, Any] = result.response["response"]
    assert response["allowed"] is True
    return response


def test_review_skips_a_missing_claim_then_mutates_once_it_exists(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces]
) -> None:
    kube.add_namespace("ml", annotations={names.PVC: "ml-cache"})
    kube.add_claim("ml", "kserve-model-cache")  # the built-in default name: not this one's
    watcher = started(make_watcher)

    missing = served(watcher, "ml")
    assert "patch" not in missing
    assert missing["auditAnnotations"] == {"skip-reason": "pvc-missing"}
    assert missing["warnings"] == [
        "kserve-cache: pod admitted without the cache: pvc-missing: "
        "PersistentVolumeClaim 'ml-cache' not found in namespace 'ml'"
    ]

    kube.add_claim("ml", "ml-cache", phase="Pending")  # Pending still mounts once bound
    eventually(lambda: "ml-cache" in (claims(watcher, "ml") or {}), what="ADDED")
    mutated = served(watcher, "ml")
    assert "warnings" not in mutated
    assert "skip-reason" not in mutated["auditAnnotations"]
    patch = json.loads(base64.b64decode(mutated["patch"]))
    volumes = [op.get("value") for op in patch if op["path"].startswith("/spec/volumes")]
    claimed = [v for v in volumes if isinstance(v, dict) and "persistentVolumeClaim" in v]
    assert [v["persistentVolumeClaim"]["claimName"] for v in claimed] == ["ml-cache"]

    kube.modify_claim("ml", "ml-cache", access_modes=("ReadWriteOnce",))
    eventually(
        lambda: (
            (claims(watcher, "ml") or {}).get("ml-cache")
            == ClaimInfo(("ReadWriteOnce",), "Pending")
        ),
        what="MODIFIED",
    )
    narrow = served(watcher, "ml")
    assert "patch" in narrow
    assert len(narrow["warnings"]) == 1
    assert (
        "'ml-cache' in namespace 'ml' is not ReadWriteMany (ReadWriteOnce)"
        in (narrow["warnings"][0])
    )

    kube.delete_claim("ml", "ml-cache")
    eventually(lambda: "ml-cache" not in (claims(watcher, "ml") or {"ml-cache": 1}), what="gone")
    assert served(watcher, "ml")["auditAnnotations"] == {"skip-reason": "pvc-missing"}


def test_review_injects_while_claims_are_unknown(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces]
) -> None:
    kube.add_namespace("ml")
    kube.forbid(CLAIMS)
    watcher = make_watcher()
    watcher.start()
    eventually(lambda: watcher.synced, what="first list")
    assert lookup(watcher, "ml").claims is None
    response = served(watcher, "ml")  # no claim at all, but nobody can tell: inject anyway
    assert "patch" in response
    assert "skip-reason" not in response.get("auditAnnotations", {})


# the factory ---------------------------------------------------------------------------------


@pytest.mark.parametrize("watch_claims", [True, False])
def test_factory_passes_the_claim_switch(
    kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, watch_claims: bool
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kube.add_claim("ml", "cache")
    source = namespace_source_from_environment(
        registry=CollectorRegistry(),
        kubeconfig=str(kube.write_kubeconfig(tmp_path / "kc")),
        watch_claims=watch_claims,
        backoff_initial=0.02,
    )
    assert isinstance(source, WatchedNamespaces)
    source.start()
    try:
        eventually(lambda: source.synced, what="first list")
        if watch_claims:
            eventually(lambda: source.claims_known, what="claims synced")
            assert source.claims_of("ml") == {"cache": ClaimInfo(RWX, "Bound")}
        else:
            assert source.claims_of("ml") is None
            assert kube.lists(CLAIMS) == 0
    finally:
        source.stop()


def test_a_claim_the_watch_has_not_delivered_is_confirmed_with_one_get(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces]
) -> None:
    kube.add_namespace("ml")
    watcher = started(make_watcher, watch_timeout=30)
    kube.add_claim("ml", "just-made", quiet=True)  # created a moment before its pod
    kube.add_claim("ml", "leaving", quiet=True)
    kube.modify_claim("ml", "leaving", deleting=True, quiet=True)
    assert claims(watcher, "ml") == {}

    assert asyncio.run(watcher.confirm_claim("ml", "just-made")) is True
    assert claims(watcher, "ml") == {"just-made": ClaimInfo(RWX, "Bound")}  # kept in memory
    assert asyncio.run(watcher.confirm_claim("ml", "nowhere")) is False
    assert asyncio.run(watcher.confirm_claim("ml", "leaving")) is False
    watcher.stop()
    assert asyncio.run(watcher.confirm_claim("ml", "just-made")) is None


def test_the_webhook_asks_before_skipping_for_a_missing_claim(
    kube: FakeKube, tmp_path: Path
) -> None:
    from tests.conftest import start_server, stop_server

    kube.add_namespace("ml")
    server = start_server(tmp_path, "--kubeconfig", str(kube.write_kubeconfig(tmp_path / "kc")))
    try:
        with server.client(timeout=10) as http:
            eventually(lambda: http.get("/readyz").status_code == 200, what="ready")
            eventually(
                lambda: "kserve_cache_claims_synced 1.0" in http.get("/metrics").text,
                what="claims listed",
            )
            kube.add_claim("ml", "kserve-model-cache", quiet=True)  # the watch never says so
            body = json.dumps(make_review(POD, namespace="ml")).encode()
            headers = {"content-type": "application/json"}
            answer = http.post("/mutate", content=body, headers=headers).json()["response"]
            assert "patch" in answer, answer
            assert answer["auditAnnotations"]["cache-key"]
            # a claim that really is missing is still reported
            kube.add_namespace("empty")
            body = json.dumps(make_review(POD, namespace="empty")).encode()
            answer = http.post("/mutate", content=body, headers=headers).json()["response"]
            assert answer["auditAnnotations"] == {"skip-reason": "pvc-missing"}
    finally:
        stop_server(server)


def _post(app: Any, body: dict[str, Any]) -> dict[str, Any]:
    """One POST /mutate through the ASGI app, as uvicorn would deliver it."""
    raw = json.dumps(body).encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/mutate",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(raw))],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 200
    answer: dict[str, Any] = json.loads(sent[1]["body"])["response"]
    return answer


def test_a_claim_check_that_cannot_tell_injects(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces]
) -> None:
    """The list says the claim is missing and the confirming GET cannot tell (refused, cut
    off or late): the webhook must inject, as whenever the claims are unknown; a stale
    'missing' must never drop the cache."""
    from webhook.app import create_app

    kube.add_namespace("ml")
    watcher = started(make_watcher, watch_timeout=30)
    app = create_app(namespaces=watcher)
    assert lookup(watcher, "ml").claims == {}  # known, and the claim is not there
    kube.forbid(CLAIMS)  # the open watch stays; the GET of the claim is refused
    answer = _post(app, make_review(POD, namespace="ml"))
    assert "patch" in answer, answer
    assert "skip-reason" not in answer.get("auditAnnotations", {})
    assert lookup(watcher, "ml").claims == {}  # the list was not what decided
    kube.forbid(CLAIMS, forbidden=False)
    answer = _post(app, make_review(POD, namespace="ml"))  # the GET says: not found
    assert answer["auditAnnotations"] == {"skip-reason": "pvc-missing"}


def test_the_object_namespace_never_chooses_the_policy() -> None:
    """A caller that writes another namespace into the pod's metadata (the request has
    none) gets no answer from that namespace's policy or claims."""
    from webhook.app import create_app
    from webhook.namespaces import StaticNamespaces

    secret_policy = {names.POLICY: "forced", names.PVC: "victim-cache"}
    app = create_app(namespaces=StaticNamespaces({"victim": secret_policy}))
    pod = json.loads(json.dumps(POD))
    pod["metadata"]["namespace"] = "victim"
    for annotation in (names.ENABLED,):
        pod["metadata"]["annotations"].pop(annotation, None)
    body = make_review(pod, namespace="victim")
    body["request"]["namespace"] = ""
    answer = _post(app, body)
    assert "victim-cache" not in json.dumps(answer)
    assert answer["auditAnnotations"] == {"skip-reason": "not-opted-in"}
    # asked properly, the victim namespace's own pods do get its policy
    answer = _post(app, make_review(pod, namespace="victim"))
    assert "patch" in answer
