"""A bounded memo of admission answers, for the HTTP edge.

The pods of one ReplicaSet scaling up reach the webhook identical (same template, no name yet:
`generateName` only), so every pod after the first of a burst is answered from here: the same
answer `review()` gives, with the request's own uid. The key is everything `review()` reads:
the pod as parsed, the request's kind, operation, namespace and API version, the namespace's
view and the config object in force (a reload empties the memo). Errors, and skips that the
edge re-checks against the API server (`pvc-missing`), are never remembered.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

import orjson

from webhook.clusterconfig import ClusterConfig
from webhook.namespaces import NamespaceView
from webhook.review import AdmissionRequest, Decision, Review
from webhook.skips import SkipReason

DEFAULT_SIZE: Final = 256
"""Entries kept (least recently used first out): a few MiB at most (pod bytes and answer)."""
MAX_POD_BYTES: Final = 256 * 1024
"""Pods larger than this are not remembered (their key alone would weigh more)."""

Key = tuple[Any, ...]


@dataclass(frozen=True)
class Remembered:
    response: dict[str, Any]  # the `response` member, with the first request's uid
    decision: Decision  # without the pods and the patch: kind, reason, key, warnings


def _view_key(view: NamespaceView | None) -> Any:
    if view is None:
        return None
    annotations = view.annotations
    claims = view.claims
    return (
        view.name,
        None if annotations is None else tuple(sorted(annotations.items())),
        tuple(sorted(view.labels.items())),
        view.warning,
        None if claims is None else tuple(sorted(claims.items())),
    )


class ReviewMemo:
    """Answers remembered by key; not thread-safe (one event loop per worker uses it)."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[Key, Remembered] = OrderedDict()
        self._config: ClusterConfig | None = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def key(
        self, request: AdmissionRequest, *, view: NamespaceView | None, config: ClusterConfig
    ) -> Key | None:
        """The memo key of a request, or None when it must not be remembered. The request's
        object must come from `orjson.loads` (so that dumping it again is exact: no NaN, no
        integers beyond 64 bits)."""
        if self.size <= 0:
            return None
        if config is not self._config:
            self._entries.clear()
            self._config = config
        try:
            pod = orjson.dumps(request.object)
        except (TypeError, orjson.JSONEncodeError):
            return None
        if len(pod) > MAX_POD_BYTES:
            return None
        return (
            pod,
            request.kind,
            request.operation,
            request.namespace,
            request.api_version,
            _view_key(view),
        )

    def get(self, key: Key, request: AdmissionRequest) -> tuple[dict[str, Any], Decision] | None:
        """The whole AdmissionReview answer for `request` and its decision, or None."""
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        response = dict(found.response)
        response["uid"] = request.uid
        answer: dict[str, Any] = {
            "apiVersion": request.api_version,
            "kind": "AdmissionReview",
            "response": response,
        }
        return answer, found.decision

    def put(self, key: Key, result: Review) -> None:
        decision = result.decision
        if decision.kind == "error" or decision.reason is SkipReason.PVC_MISSING:
            return
        slim = Decision(  # `dataclasses.replace` costs several times this
            kind=decision.kind,
            reason=decision.reason,
            detail=decision.detail,
            key=decision.key,
            warnings=decision.warnings,
        )
        self._entries[key] = Remembered(dict(result.response["response"]), slim)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
