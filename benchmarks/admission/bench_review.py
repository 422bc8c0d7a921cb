"""In-process cost of one admission (pytest-benchmark): parse the body, `review()`, encode the
answer, for a mutated and a skipped padded review, and `review()` alone over the whole mix.

    .venv/bin/pytest benchmarks/admission/bench_review.py --benchmark-enable --benchmark-only
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import Item, load_items

from webhook.clusterconfig import ClusterConfig
from webhook.review import parse_review, review, review_body

CONFIG = ClusterConfig()
ITEMS = load_items()


def _kind(item: Item) -> str:
    return review_body(item.review, config=CONFIG).decision.kind


MUTATED = [i for i in ITEMS if _kind(i) == "mutated"]
SKIPPED = [i for i in ITEMS if _kind(i) == "skipped"]


def _answer(body: bytes) -> bytes:
    result = review(parse_review(orjson.loads(body)), config=CONFIG)
    return orjson.dumps(result.response)


@pytest.mark.parametrize(
    "item",
    [MUTATED[len(MUTATED) // 2], SKIPPED[len(SKIPPED) // 2]],
    ids=lambda i: f"{i.name}-{len(i.body)}B",
)
def test_body_to_answer(benchmark: Any, item: Item) -> None:
    """JSON bytes in, JSON bytes out: what /mutate does between the HTTP layers."""
    answer = orjson.loads(benchmark(_answer, item.body))
    assert answer["response"]["uid"] == item.review["request"]["uid"]


def test_review_whole_mix(benchmark: Any) -> None:
    """`review()` on each of the padded golden reviews in turn (parsed beforehand)."""
    requests = [parse_review(i.review) for i in ITEMS]

    def all_items() -> int:
        return sum(1 for request in requests if review(request, config=CONFIG).decision.patch)

    assert benchmark(all_items) == len(MUTATED)
