"""The JSON patch between two pods: a jsonpatch diff without `move` ops, checked by re-applying."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import jsonpatch


class PatchError(RuntimeError):
    """The computed patch does not turn `before` into `after`: a bug, never sent."""


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _replace_ops(before: Any, after: Any, path: str) -> list[dict[str, Any]]:
    """A coarse patch with only add/remove/replace: recurse into mappings, replace lists."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        ops: list[dict[str, Any]] = []
        for key in before:
            if key not in after:
                ops.append({"op": "remove", "path": f"{path}/{_escape(key)}"})
        for key, value in after.items():
            sub = f"{path}/{_escape(key)}"
            if key not in before:
                ops.append({"op": "add", "path": sub, "value": value})
            elif before[key] != value:
                ops.extend(_replace_ops(before[key], value, sub))
        return ops
    return [{"op": "replace", "path": path, "value": after}]


def make_patch(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[dict[str, Any]]:
    """RFC 6902 operations turning `before` into `after`, verified by applying them."""
    ops: list[dict[str, Any]] = list(
        jsonpatch.JsonPatch.from_diff(before, after, optimization=False)
    )
    if any(op["op"] in ("move", "copy") for op in ops):
        ops = _replace_ops(before, after, "")
    if jsonpatch.apply_patch(before, ops) != after:
        raise PatchError("the patch does not reproduce the mutated pod")
    return ops


def encode_patch(ops: list[dict[str, Any]]) -> str:
    return base64.b64encode(json.dumps(ops, separators=(",", ":")).encode()).decode()
