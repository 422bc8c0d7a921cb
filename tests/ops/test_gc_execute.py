"""The executor on a real volume when the world changes between the plan and the eviction:
a fetch hits in between, a lease is taken, another gc got there first."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.ops.helpers import DAY, before_rename, build_entry, entry_problems
from webhook.cache.gc import Budget, execute, plan_gc, scan
from webhook.cache.layout import Layout, list_keys, record_usage
from webhook.cache.lease import try_acquire

BUDGET = Budget(max_bytes=0, grace=3600)


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path / "cache")
    layout.ensure_dirs()
    return layout


def one_entry(layout: Layout) -> str:
    now = time.time()
    return build_entry(layout, "m", size=5000, last_used=now - DAY, created_at=now - DAY).key


def test_a_hit_between_the_check_and_the_rename_gets_the_entry_back(layout: Layout) -> None:
    key = one_entry(layout)
    now = time.time()
    plan = plan_gc(scan(layout, now=now, lease_ttl=120), budget=BUDGET, now=now, in_use=None)
    assert [d.key for d in plan.evict] == [key]
    clock = before_rename(lambda: record_usage(layout, key, "hit"))  # a fetch hits now

    outcome = execute(layout, plan, budget=BUDGET, clock=clock)
    assert outcome.evicted == []
    assert outcome.skipped == {key: "used-during-eviction"}
    assert list_keys(layout) == [key]
    assert entry_problems(layout, key) == []
    assert list(layout.trash.iterdir()) == []


def test_a_use_or_a_lease_after_the_plan_keeps_the_entry(layout: Layout) -> None:
    key = one_entry(layout)
    now = time.time()
    plan = plan_gc(scan(layout, now=now, lease_ttl=120), budget=BUDGET, now=now, in_use=None)
    record_usage(layout, key, "hit")
    assert execute(layout, plan, budget=BUDGET).skipped == {key: "used-since-plan"}
    assert try_acquire(layout, key, holder="a-pod") is not None
    assert execute(layout, plan, budget=Budget(max_bytes=0, grace=0)).skipped == {key: "leased"}
    assert entry_problems(layout, key) == []


def test_an_entry_already_gone_is_not_counted(layout: Layout) -> None:
    key = one_entry(layout)
    now = time.time()
    plan = plan_gc(scan(layout, now=now, lease_ttl=120), budget=BUDGET, now=now, in_use=None)
    first = execute(layout, plan, budget=BUDGET)
    second = execute(layout, plan, budget=BUDGET)
    assert (first.evicted, first.freed_bytes) == ([key], 5000)
    assert (second.evicted, second.freed_bytes, second.skipped) == ([], 0, {key: "gone"})
    assert list_keys(layout) == []
