"""The eviction planner on its own: exact plans for byte, usage and age budgets, protections,
housekeeping, and the parsing of sizes and durations."""

from __future__ import annotations

import json

import pytest

from webhook.cache.gc import (
    Budget,
    Entry,
    Filesystem,
    GcError,
    Lease,
    Snapshot,
    Staging,
    Trash,
    keys_in_use,
    parse_duration,
    parse_size,
    plan_gc,
)

NOW = 1_800_000_000.0
DAY = 86400.0
HOUR = 3600.0


def ten_entries(**changes: dict[str, object]) -> tuple[Entry, ...]:
    """e0..e9: e<i> holds (i+1)*100 bytes and was last used i+1 days ago (e9 is the oldest).
    Total 5500 bytes."""
    entries = []
    for i in range(10):
        fields: dict[str, object] = {
            "key": f"e{i}-{i:016x}",
            "bytes": (i + 1) * 100,
            "last_used": NOW - (i + 1) * DAY,
        }
        fields.update(changes.get(f"e{i}", {}))
        entries.append(Entry(**fields))  # type: ignore[arg-type]
    return tuple(entries)


def k(*names: str) -> list[str]:
    return [f"{n}-{int(n[1:]):016x}" for n in names]


def evicted(plan: object) -> list[str]:
    return [d.key for d in plan.evict]  # type: ignore[attr-defined]


def reasons(plan: object) -> dict[str, str]:
    return {d.key: f"{d.action}:{d.reason}" for d in plan.decisions}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("budget", "in_use", "expected", "after"),
    [
        # 5500 -> 3000: e9 (1000) + e8 (900) = 1900 is not enough, e7 (800) makes 2700.
        pytest.param(Budget(max_bytes=3000), frozenset(), k("e9", "e8", "e7"), 2800, id="bytes"),
        # e8 is in use: e9 + e7 + e6 = 2500 lands exactly on the budget.
        pytest.param(
            Budget(max_bytes=3000), frozenset(k("e8")), k("e9", "e7", "e6"), 3000, id="bytes-in-use"
        ),
        pytest.param(Budget(max_bytes=5500), frozenset(), [], 5500, id="bytes-exactly-fits"),
        pytest.param(Budget(max_bytes=5499), frozenset(), k("e9"), 4500, id="bytes-one-over"),
        # Used more than 5.5 days ago: e5 (6 days) to e9 (10 days).
        pytest.param(
            Budget(max_age=5.5 * DAY), frozenset(), k("e9", "e8", "e7", "e6", "e5"), 1500, id="age"
        ),
        # Age takes e9, e8 (1900 bytes); the byte budget then needs 600 more: e7.
        pytest.param(
            Budget(max_age=8.5 * DAY, max_bytes=3000),
            frozenset(),
            k("e9", "e8", "e7"),
            2800,
            id="age-then-bytes",
        ),
        pytest.param(Budget(), frozenset(), [], 5500, id="no-budget"),
    ],
)
def test_plan_evicts_exactly_the_lru_prefix(
    budget: Budget, in_use: frozenset[str], expected: list[str], after: int
) -> None:
    plan = plan_gc(Snapshot(ten_entries()), budget=budget, now=NOW, in_use=in_use)
    assert evicted(plan) == expected
    assert plan.bytes_before == 5500
    assert plan.bytes_after == after
    assert sum(d.bytes for d in plan.keep) == after
    assert {d.key for d in plan.decisions} == {e.key for e in ten_entries()}


def test_reasons_name_the_budget_that_evicted() -> None:
    plan = plan_gc(
        Snapshot(ten_entries()),
        budget=Budget(max_age=8.5 * DAY, max_bytes=3000),
        now=NOW,
        in_use=frozenset(),
    )
    got = reasons(plan)
    assert got[k("e9")[0]] == "evict:age"
    assert got[k("e8")[0]] == "evict:age"
    assert got[k("e7")[0]] == "evict:bytes"
    assert got[k("e0")[0]] == "keep:within-budget"


@pytest.mark.parametrize(
    ("fs", "pct", "expected", "usage_after"),
    [
        # 12000 of 20000 used (60 %); 50 % means freeing 2000: e9 + e8 = 1900, then e7.
        pytest.param(Filesystem(25000, 12000, 8000), 50.0, k("e9", "e8", "e7"), 46.5, id="50pct"),
        # Freeing exactly 1000 (e9) reaches 55 %.
        pytest.param(Filesystem(25000, 12000, 8000), 55.0, k("e9"), 55.0, id="55pct-exact"),
        pytest.param(Filesystem(25000, 12000, 8000), 60.0, [], 60.0, id="already-under"),
        # 0 % can only be approached: every entry goes, the rest is not the cache's.
        pytest.param(
            Filesystem(25000, 12000, 8000),
            0.0,
            k("e9", "e8", "e7", "e6", "e5", "e4", "e3", "e2", "e1", "e0"),
            32.5,
            id="0pct",
        ),
    ],
)
def test_usage_budget_uses_the_filesystem_figures(
    fs: Filesystem, pct: float, expected: list[str], usage_after: float
) -> None:
    plan = plan_gc(
        Snapshot(ten_entries(), filesystem=fs),
        budget=Budget(max_usage=pct),
        now=NOW,
        in_use=frozenset(),
    )
    assert evicted(plan) == expected
    assert plan.usage_before == pytest.approx(60.0)
    assert plan.usage_after == pytest.approx(usage_after)
    assert all(r.startswith("evict:usage") for r in reasons(plan).values() if r[0] == "e")
    assert bool(plan.over_budget) == (pct == 0.0)


def test_usage_budget_without_figures_is_refused() -> None:
    with pytest.raises(GcError, match="filesystem"):
        plan_gc(Snapshot(ten_entries()), budget=Budget(max_usage=50), now=NOW, in_use=None)


def test_protected_entries_are_never_evicted_even_over_budget() -> None:
    entries = ten_entries(
        e9={"leased": True},  # a live lease
        e8={"last_used": NOW - 30 * 60},  # used half an hour ago
    )
    plan = plan_gc(
        Snapshot(entries),
        budget=Budget(max_bytes=0, max_age=0, grace=HOUR),
        now=NOW,
        in_use=frozenset(k("e7")),
    )
    got = reasons(plan)
    assert got[k("e9")[0]] == "keep:leased"
    assert got[k("e8")[0]] == "keep:grace"
    assert got[k("e7")[0]] == "keep:in-use"
    assert sorted(evicted(plan)) == sorted(k("e0", "e1", "e2", "e3", "e4", "e5", "e6"))
    assert plan.bytes_after == 1000 + 900 + 800
    assert plan.over_budget == ("bytes: 2700 bytes over, the rest is protected",)


def test_without_the_cluster_check_in_use_is_unknown_not_protected() -> None:
    plan = plan_gc(Snapshot(ten_entries()), budget=Budget(max_bytes=0), now=NOW, in_use=None)
    assert len(plan.evict) == 10
    assert plan.cluster_checked is False


def test_grace_zero_and_just_inside_grace() -> None:
    entries = (Entry("a-0000000000000001", 10, NOW - 59), Entry("b-0000000000000002", 10, NOW))
    inside = plan_gc(Snapshot(entries), budget=Budget(max_bytes=0, grace=60), now=NOW, in_use=None)
    assert evicted(inside) == []
    none = plan_gc(Snapshot(entries), budget=Budget(max_bytes=0, grace=0), now=NOW, in_use=None)
    assert evicted(none) == ["a-0000000000000001", "b-0000000000000002"]


def test_an_entry_without_manifest_goes_whatever_the_budget_unless_protected() -> None:
    entries = (
        Entry("broken-0000000000000001", 0, NOW - 2 * HOUR, valid=False),
        Entry("fresh-0000000000000002", 0, NOW - 60, valid=False),
        Entry("used-0000000000000003", 0, NOW - 2 * HOUR, valid=False),
        Entry("good-0000000000000004", 100, NOW - 2 * HOUR),
    )
    plan = plan_gc(
        Snapshot(entries),
        budget=Budget(),
        now=NOW,
        in_use=frozenset({"used-0000000000000003"}),
    )
    assert reasons(plan) == {
        "broken-0000000000000001": "evict:invalid",
        "fresh-0000000000000002": "keep:grace",
        "used-0000000000000003": "keep:in-use",
        "good-0000000000000004": "keep:within-budget",
    }


def test_ties_in_last_use_break_by_key() -> None:
    entries = tuple(Entry(f"{c}-000000000000000{i}", 10, NOW - DAY) for i, c in enumerate("cab"))
    plan = plan_gc(Snapshot(entries), budget=Budget(max_bytes=15), now=NOW, in_use=None)
    assert evicted(plan) == ["a-0000000000000001", "b-0000000000000002"]


def test_housekeeping_stale_staging_dead_leases_old_trash() -> None:
    snapshot = Snapshot(
        entries=(),
        staging=(
            Staging("a-0000000000000001.aaaa", "a-0000000000000001", NOW - 600),
            Staging("b-0000000000000002.bbbb", "b-0000000000000002", NOW - 600, leased=True),
            Staging("c-0000000000000003.cccc", "c-0000000000000003", NOW - 10),
            Staging("junk", None, NOW - 600),
        ),
        # Dead after TTL + margin (1.25 x 120 = 150 s) without a rewrite.
        leases=(
            Lease("a-0000000000000001", NOW - 151),
            Lease("b-0000000000000002", NOW - 5),
            Lease("c-0000000000000003", NOW - 149),
        ),
        trash=(Trash("x-0000000000000009.1.ab", NOW - 600), Trash("y.2.cd", NOW - 5)),
    )
    plan = plan_gc(snapshot, budget=Budget(lease_ttl=120), now=NOW, in_use=None)
    assert plan.stale_staging == ("a-0000000000000001.aaaa", "junk")
    assert plan.dead_leases == ("a-0000000000000001",)
    assert plan.old_trash == ("x-0000000000000009.1.ab",)


def pod(key: str | None, phase: str = "Running", raw: str | None = None) -> dict[str, object]:
    annotations = {}
    if raw is not None:
        annotations["cache.kserve.io/status"] = raw
    elif key is not None:
        annotations["cache.kserve.io/status"] = json.dumps({"key": key, "pvc": "models"})
    return {
        "metadata": {"name": "p", "namespace": "n", "annotations": annotations},
        "status": {"phase": phase},
    }


def test_keys_in_use_takes_live_pods_only(caplog: pytest.LogCaptureFixture) -> None:
    pods = [
        pod("run-0000000000000001"),
        pod("pend-0000000000000002", phase="Pending"),
        pod("unknown-0000000000000003", phase="Unknown"),
        pod("done-0000000000000004", phase="Succeeded"),
        pod("fail-0000000000000005", phase="Failed"),
        pod(None),
        pod(None, raw="{not json"),
        pod(None, raw='{"key": "../../etc"}'),
        {"metadata": {}, "status": {}},
    ]
    assert keys_in_use(pods, annotation="cache.kserve.io/status") == {
        "run-0000000000000001",
        "pend-0000000000000002",
        "unknown-0000000000000003",
    }
    assert "unreadable" in caplog.text


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("512", 512),
        ("10K", 10_000),
        ("10Ki", 10_240),
        ("1.5G", 1_500_000_000),
        ("2Gi", 2 * 1024**3),
        ("3Mi", 3 * 1024**2),
        ("1T", 10**12),
        ("100MB", 100_000_000),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "ten", "10X", "-1", "1 0K", "G"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(GcError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("300", 300.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("12h", 43200.0),
        ("7d", 604800.0),
        ("1w", 604800.0),
        ("1h30m", 5400.0),
        ("0", 0.0),
    ],
)
def test_parse_duration(text: str, value: float) -> None:
    assert parse_duration(text) == value


@pytest.mark.parametrize("text", ["", "soon", "7x", "-5", "h", "1h 30m", "5d-"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(GcError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    "fields",
    [{"max_bytes": -1}, {"max_usage": 101.0}, {"max_age": -1.0}, {"lease_ttl": 0.0}],
)
def test_budget_refuses_nonsense(fields: dict[str, float]) -> None:
    with pytest.raises(GcError):
        Budget(**fields)  # type: ignore[arg-type]
