"""WatchedNamespaces with the real `kubernetes` client against the fake API server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from prometheus_client import CollectorRegistry

from tests.fakekube import FakeKube
from tests.watching import eventually, lookup, sample
from webhook import names
from webhook.clusterconfig import ClusterConfig
from webhook.namespaces import (
    NamespaceView,
    StaticNamespaces,
    WatchedNamespaces,
    namespace_source_from_environment,
)
from webhook.policy import Layer, resolve_policy


@pytest.fixture
def configuration(kube: FakeKube, tmp_path: Path) -> client.Configuration:
    cfg = client.Configuration()
    config.load_kube_config(
        config_file=str(kube.write_kubeconfig(tmp_path / "kubeconfig")), client_configuration=cfg
    )
    return cfg


@pytest.fixture
def make_watcher(
    configuration: client.Configuration, registry: CollectorRegistry
) -> Iterator[Callable[..., WatchedNamespaces]]:
    made: list[WatchedNamespaces] = []

    def make(**options: object) -> WatchedNamespaces:
        settings: dict[str, object] = {
            "watch_timeout": 2,
            "request_timeout": 2.0,
            "connect_timeout": 0.5,
            "lookup_timeout": 1.0,
            "backoff_initial": 0.02,
            "backoff_max": 0.1,
        }
        settings.update(options)
        watcher = WatchedNamespaces(configuration, registry=registry, **settings)  # type: ignore[arg-type]
        made.append(watcher)
        return watcher

    yield make
    for watcher in made:
        watcher.stop()


def annotations_of(watcher: WatchedNamespaces, name: str) -> dict[str, str] | None:
    view = watcher.get(name)
    return None if view is None else dict(view.annotations or {})


def test_initial_list_fills_the_cache(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces], registry: CollectorRegistry
) -> None:
    kube.add_namespace("team-a", annotations={names.POLICY: "forced"}, labels={"tier": "gold"})
    kube.add_namespace("team-b")
    watcher = make_watcher()
    assert not watcher.synced
    watcher.start()
    eventually(lambda: watcher.synced, what="first list")

    assert watcher.names() == ["team-a", "team-b"]
    view = lookup(watcher, "team-a")
    assert dict(view.annotations or {}) == {names.POLICY: "forced"}
    assert view.labels["tier"] == "gold"
    assert view.warning is None
    assert sample(registry, "kserve_cache_namespaces_synced") == 1
    assert sample(registry, "kserve_cache_namespaces_cached") == 2
    assert kube.gets_of("team-a") == 0  # answered from memory


def test_added_modified_deleted_events_are_applied(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces], registry: CollectorRegistry
) -> None:
    kube.add_namespace("old")
    watcher = make_watcher()
    watcher.start()
    eventually(lambda: watcher.synced, what="first list")

    kube.add_namespace("new", annotations={names.PVC: "fast-cache"})
    eventually(lambda: annotations_of(watcher, "new") == {names.PVC: "fast-cache"}, what="ADDED")
    kube.modify_namespace("new", annotations={names.PVC: "slow-cache", names.ENABLED: "true"})
    eventually(
        lambda: annotations_of(watcher, "new") == {names.PVC: "slow-cache", names.ENABLED: "true"},
        what="MODIFIED",
    )
    kube.delete_namespace("old")
    eventually(lambda: watcher.get("old") is None, what="DELETED")
    assert watcher.names() == ["new"]
    assert sample(registry, "kserve_cache_namespaces_cached") == 1
    assert kube.lists() == 1  # events alone, no re-list


def test_410_gone_lists_again_and_state_is_right(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces], registry: CollectorRegistry
) -> None:
    kube.add_namespace("stays")
    kube.add_namespace("goes")
    watcher = make_watcher(watch_timeout=1)
    watcher.start()
    eventually(lambda: watcher.synced, what="first list")

    # Changes the watch never delivers, then the history is compacted: only a re-list sees them.
    kube.delete_namespace("goes", quiet=True)
    kube.modify_namespace("stays", annotations={names.POLICY: "disabled"}, quiet=True)
    kube.add_namespace("arrived", quiet=True)
    kube.compact()

    eventually(lambda: watcher.names() == ["arrived", "stays"], what="re-list after 410")
    assert annotations_of(watcher, "stays") == {names.POLICY: "disabled"}
    assert sample(registry, "kserve_cache_namespace_watch_restarts_total", reason="gone") >= 1
    assert kube.lists() >= 2

    # and the watch goes on from the new list
    kube.add_namespace("after")
    eventually(lambda: watcher.get("after") is not None, what="ADDED after the re-list")


def test_410_error_event_on_a_watch(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces], registry: CollectorRegistry
) -> None:
    watcher = make_watcher(watch_timeout=1)
    kube.gone_next_watch()
    watcher.start()
    eventually(
        lambda: sample(registry, "kserve_cache_namespace_watch_restarts_total", reason="gone"),
        what="a 410 seen",
    )
    kube.add_namespace("later")
    eventually(lambda: watcher.get("later") is not None, what="ADDED after the 410")


def test_dropped_connection_reconnects(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces], registry: CollectorRegistry
) -> None:
    kube.add_namespace("a")
    watcher = make_watcher(watch_timeout=30)
    watcher.start()
    eventually(lambda: watcher.synced and kube.watches() >= 1, what="watch open")

    kube.drop_connections()
    eventually(
        lambda: sample(registry, "kserve_cache_namespace_watch_restarts_total", reason="error"),
        what="the drop noticed",
    )
    kube.add_namespace("b", annotations={names.ENABLED: "true"})
    eventually(lambda: watcher.get("b") is not None, what="ADDED after reconnect")
    assert annotations_of(watcher, "b") == {names.ENABLED: "true"}
    assert kube.watches() >= 2


def test_server_down_lookups_fall_back_then_recover(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces], registry: CollectorRegistry
) -> None:
    kube.add_namespace("known", annotations={names.POLICY: "forced"})
    watcher = make_watcher()
    watcher.start()
    eventually(lambda: watcher.synced, what="first list")

    kube.stop()
    eventually(lambda: not watcher.reachable, what="outage noticed")

    unseen = lookup(watcher, "unseen")
    assert unseen.annotations is None
    assert unseen.warning is not None
    assert "namespace policy unavailable, using the cluster config" in unseen.warning
    assert "'unseen'" in unseen.warning
    assert sample(registry, "kserve_cache_namespace_fallbacks_total", reason="unreachable") == 1
    assert kube.gets_of("unseen") == 0  # no GET tried against a server known to be down

    # a namespace seen before keeps its last known policy
    known = lookup(watcher, "known")
    assert dict(known.annotations or {}) == {names.POLICY: "forced"}
    assert known.warning is None

    # the pod is still admitted, with the cluster config and the warning carried along
    policy = resolve_policy(
        cluster=ClusterConfig(policy="default-on"),  # type: ignore[arg-type]
        namespace_annotations=unseen.annotations,
        pod_annotations={},
        namespace="unseen",
    )
    assert policy.cache
    assert policy.sources["policy"] is Layer.CLUSTER

    # changes while down are picked up after the server returns on the same port
    kube.add_namespace("unseen", annotations={names.POLICY: "disabled"})
    kube.delete_namespace("known")
    kube.start()
    eventually(lambda: watcher.reachable and watcher.get("known") is None, what="recovery")
    assert annotations_of(watcher, "unseen") == {names.POLICY: "disabled"}
    assert sample(registry, "kserve_cache_namespace_watch_restarts_total", reason="error") >= 1


def test_server_down_before_first_list(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces], registry: CollectorRegistry
) -> None:
    kube.stop()
    watcher = make_watcher()
    watcher.start()
    eventually(
        lambda: sample(registry, "kserve_cache_namespace_watch_restarts_total", reason="error"),
        what="a failed list",
    )
    assert not watcher.synced
    view = lookup(watcher, "any")
    assert view.annotations is None
    assert view.warning is not None
    kube.add_namespace("any", annotations={names.ENABLED: "true"})
    kube.start()
    eventually(lambda: watcher.synced, what="first list after the server came up")
    assert annotations_of(watcher, "any") == {names.ENABLED: "true"}


def test_namespace_not_seen_yet_costs_one_get(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces]
) -> None:
    watcher = make_watcher(watch_timeout=30)
    watcher.start()
    eventually(lambda: watcher.synced and kube.watches() >= 1, what="watch open")
    # created a moment ago: the watch has not delivered it
    kube.add_namespace("fresh", annotations={names.PVC: "team-cache"}, quiet=True)
    assert watcher.get("fresh") is None

    async def many() -> list[NamespaceView]:
        return await asyncio.gather(*(watcher.lookup("fresh") for _ in range(8)))

    views = asyncio.run(asyncio.wait_for(many(), 10))
    assert {dict(v.annotations or {}).get(names.PVC) for v in views} == {"team-cache"}
    assert all(v.warning is None for v in views)
    assert kube.gets_of("fresh") == 1

    # kept in memory afterwards
    assert dict(lookup(watcher, "fresh").annotations or {}) == {names.PVC: "team-cache"}
    assert kube.gets_of("fresh") == 1


class _InlineExecutor:
    """Runs the GET at once, so its future is done before anyone adds a callback to it."""

    def submit(self, fn: Callable[..., object], *args: object) -> concurrent.futures.Future[object]:
        future: concurrent.futures.Future[object] = concurrent.futures.Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def test_a_get_that_finishes_at_once_does_not_deadlock_the_lookup(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces]
) -> None:
    watcher = make_watcher(watch_timeout=30)
    watcher.start()
    eventually(lambda: watcher.synced and kube.watches() >= 1, what="watch open")
    kube.add_namespace("quick", annotations={names.PVC: "quick-cache"}, quiet=True)
    watcher._getters = _InlineExecutor()  # type: ignore[assignment]
    views: list[NamespaceView] = []
    thread = threading.Thread(target=lambda: views.append(lookup(watcher, "quick")), daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "lookup deadlocked on a GET that had already finished"
    assert dict(views[0].annotations or {}) == {names.PVC: "quick-cache"}
    assert lookup(watcher, "quick").annotations is not None  # the next lookup is not stuck


def test_namespace_that_does_not_exist(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces], registry: CollectorRegistry
) -> None:
    watcher = make_watcher()
    watcher.start()
    eventually(lambda: watcher.synced, what="first list")
    view = lookup(watcher, "nowhere")
    assert (view.name, view.annotations, view.warning) == ("nowhere", None, None)
    assert kube.gets_of("nowhere") == 1
    assert sample(registry, "kserve_cache_namespace_fallbacks_total", reason="timeout") == 0


def test_slow_server_does_not_hold_the_admission(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces], registry: CollectorRegistry
) -> None:
    watcher = make_watcher(lookup_timeout=0.2, watch_timeout=30)
    watcher.start()
    eventually(lambda: watcher.synced, what="first list")
    kube.add_namespace("slow", annotations={names.POLICY: "forced"}, quiet=True)
    kube.delay_gets(30)

    view = lookup(watcher, "slow")
    assert view.annotations is None
    assert view.warning is not None
    assert "did not answer" in view.warning
    assert sample(registry, "kserve_cache_namespace_fallbacks_total", reason="timeout") == 1
    kube.delay_gets(0)
    kube.stop()  # ends the delayed GET


def test_annotation_change_takes_effect_without_restart(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces]
) -> None:
    kube.add_namespace("ml", annotations={names.POLICY: "opt-in"})
    watcher = make_watcher()
    watcher.start()
    eventually(lambda: watcher.synced, what="first list")
    cluster = ClusterConfig()

    def decide() -> bool:
        view = lookup(watcher, "ml")
        return resolve_policy(
            cluster=cluster,
            namespace_annotations=view.annotations,
            pod_annotations={},
            namespace="ml",
        ).cache

    assert decide() is False
    kube.modify_namespace("ml", annotations={names.POLICY: "default-on", names.PVC: "ml-cache"})
    eventually(decide, what="default-on in effect")
    view = lookup(watcher, "ml")
    policy = resolve_policy(
        cluster=cluster, namespace_annotations=view.annotations, pod_annotations={}, namespace="ml"
    )
    assert policy.pvc == "ml-cache"
    assert policy.sources["pvc"] is Layer.NAMESPACE
    kube.modify_namespace("ml", annotations={names.POLICY: "disabled"})
    eventually(lambda: not decide(), what="disabled in effect")


def test_stop_is_prompt_and_final(
    kube: FakeKube, make_watcher: Callable[..., WatchedNamespaces], registry: CollectorRegistry
) -> None:
    watcher = make_watcher(watch_timeout=300)
    watcher.start()
    eventually(lambda: watcher.synced and kube.watches() >= 1, what="watch open")
    watcher.stop()
    view = lookup(watcher, "unseen")
    assert view.annotations is None
    assert view.warning is not None
    assert kube.gets_of("unseen") == 0


# the factory ---------------------------------------------------------------------------------


def test_factory_without_cluster_turns_namespace_policy_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with caplog.at_level(logging.INFO, logger="webhook.namespaces"):
        source = namespace_source_from_environment(registry=CollectorRegistry(), kubeconfig=None)
    assert isinstance(source, StaticNamespaces)
    assert source.synced
    assert "no cluster: namespace policy off" in caplog.text


def test_factory_with_kubeconfig_watches(
    kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kube.add_namespace("team-x", annotations={names.SERVING_MODE: "copy"})
    registry = CollectorRegistry()
    source = namespace_source_from_environment(
        registry=registry,
        kubeconfig=str(kube.write_kubeconfig(tmp_path / "kc")),
        backoff_initial=0.02,
    )
    assert isinstance(source, WatchedNamespaces)
    source.start()
    try:
        eventually(lambda: source.synced, what="first list")
        assert dict(lookup(source, "team-x").annotations or {}) == {names.SERVING_MODE: "copy"}
        assert registry.get_sample_value("kserve_cache_namespaces_synced") == 1
    finally:
        source.stop()


def test_factory_in_cluster_without_service_account_fails_clearly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "1")
    with pytest.raises(config.ConfigException):
        namespace_source_from_environment(registry=CollectorRegistry())


def test_fakekube_lists_pods_with_a_label_selector(
    kube: FakeKube, configuration: client.Configuration
) -> None:
    # used by the gc tests: pods across namespaces, filtered loosely by label
    def pod(name: str, namespace: str, labels: dict[str, str]) -> dict[str, object]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }

    kube.set_pods(
        [
            pod("p1", "a", {"component": "predictor"}),
            pod("p2", "b", {"component": "predictor", "x": "y"}),
            pod("p3", "b", {"component": "transformer"}),
        ]
    )
    with client.ApiClient(configuration) as api:
        core = client.CoreV1Api(api)
        found = core.list_pod_for_all_namespaces(label_selector="component=predictor")
        assert sorted(p.metadata.name for p in found.items) == ["p1", "p2"]
        assert len(core.list_pod_for_all_namespaces().items) == 3
        in_b = core.list_namespaced_pod("b", label_selector="component!=predictor")
        assert [p.metadata.name for p in in_b.items] == ["p3"]
