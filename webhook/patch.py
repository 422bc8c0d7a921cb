"""JSON patches (RFC 6902, add/remove/replace only: no `move`/`copy`).

The admission path does not diff: `mutate()` records each operation where it makes the change
(`add_op`, `replace_op`, `remove_op`). `make_patch()` diffs two documents, for `preview` of
documents the webhook did not patch itself, and checks its result by applying it. The tests
apply every patch again with the `jsonpatch` library and compare with the mutated pod.

The diff skips subtrees shared by identity, so it costs what was changed, not the size of the
document (managedFields, env).
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping
from typing import Any

import orjson


class PatchError(RuntimeError):
    """The computed patch does not turn `before` into `after`: a bug, never sent."""


Op = dict[str, Any]
"""One RFC 6902 operation: `{"op": ..., "path": ..., "value": ...}`."""


def escape(token: str) -> str:
    """A member name as a JSON pointer token (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


def add_op(path: str, value: Any) -> Op:
    return {"op": "add", "path": path, "value": value}


def replace_op(path: str, value: Any) -> Op:
    return {"op": "replace", "path": path, "value": value}


def remove_op(path: str) -> Op:
    return {"op": "remove", "path": path}


def member_ops(path: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Op]:
    """The operations turning the object `before` into `after` one member deep: an `add`,
    `replace` or `remove` of each member that differs (values are not descended into). A
    taken-over container so costs a dozen comparisons, and its patch names what changed."""
    ops = [remove_op(f"{path}/{escape(key)}") for key in before if key not in after]
    for key, value in after.items():
        old = before.get(key, MISSING)
        if old is MISSING:
            ops.append(add_op(f"{path}/{escape(key)}", value))
        elif old is not value and not same(old, value):
            ops.append(replace_op(f"{path}/{escape(key)}", value))
    return ops


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


MISSING: Any = object()
"""A member that is not there (`None` is JSON null)."""


def same(a: Any, b: Any) -> bool:
    """JSON equality: `true` is not `1`, objects compare member by member, identity first."""
    if a is b:
        return True
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is dict:
        if len(a) != len(b):
            return False
        for key, value in a.items():
            other = b.get(key, MISSING)
            if value is not other and (other is MISSING or not same(value, other)):
                return False
        return True
    if kind is list:
        if len(a) != len(b):
            return False
        for value, other in zip(a, b, strict=True):
            if value is not other and not same(value, other):
                return False
        return True
    return bool(a == b)


def _diff(before: Any, after: Any, path: str, ops: list[dict[str, Any]]) -> None:
    if before is after:
        return
    if type(before) is dict and type(after) is dict:
        for key in before:
            if key not in after:
                ops.append({"op": "remove", "path": f"{path}/{escape(key)}"})
        for key, value in after.items():
            old = before.get(key, MISSING)
            if old is value:  # shared with the input: nothing changed below
                continue
            sub = f"{path}/{escape(key)}"
            if old is MISSING:
                ops.append({"op": "add", "path": sub, "value": value})
            else:
                _diff(old, value, sub, ops)
        return
    if type(before) is list and type(after) is list:
        _diff_lists(before, after, path, ops)
        return
    if type(before) is not type(after) or before != after:
        ops.append({"op": "replace", "path": path, "value": after})


def _diff_lists(before: list[Any], after: list[Any], path: str, ops: list[dict[str, Any]]) -> None:
    """Items are compared by position between the common head and tail of the two lists: an
    appended volume is one `add`, a taken-over init container a diff of that container. An
    item that changed its `name` is replaced whole, and so is a list of scalars that would take
    as many ops as it has items (the init container's `args`): patches stay readable."""
    n, m = len(before), len(after)
    start = 0
    if n != m:
        shorter = min(n, m)
        while start < shorter and same(before[start], after[start]):
            start += 1
        end = 0
        while end < shorter - start and same(before[n - 1 - end], after[m - 1 - end]):
            end += 1
        n, m = n - end, m - end
    paired = min(n, m)
    mine: list[dict[str, Any]] = []
    for i in range(start, paired):
        old, new = before[i], after[i]
        if old is new:
            continue
        if type(old) is dict and type(new) is dict and old.get("name") != new.get("name"):
            mine.append({"op": "replace", "path": f"{path}/{i}", "value": new})
        else:
            _diff(old, new, f"{path}/{i}", mine)
    for _ in range(paired, n):  # each removal shifts the next one to the same index
        mine.append({"op": "remove", "path": f"{path}/{paired}"})
    for j in range(paired, m):
        mine.append({"op": "add", "path": f"{path}/{j}", "value": after[j]})
    scalars = all(type(item) not in (dict, list) for item in after)
    if scalars and len(mine) > 1 and len(mine) >= len(after):
        mine = [{"op": "replace", "path": path, "value": after}]
    ops.extend(mine)


def _child_for_write(node: Any, token: str, copied: set[int]) -> Any:
    """The container at `token` under `node`, copied (once) so that it can be changed."""
    key: Any = _index(token, len(node), adding=False) if type(node) is list else _unescape(token)
    if type(node) is dict and key not in node:
        raise PatchError(f"no member {key!r}")
    child = node[key]
    kind = type(child)
    if kind is not dict and kind is not list:
        raise PatchError(f"path goes through a {kind.__name__}")
    if id(child) not in copied:
        child = node[key] = kind(child)
        copied.add(id(child))
    return child


def _index(part: str, size: int, *, adding: bool) -> int:
    if part == "-" and adding:
        return size
    if not part.isdigit() or (part != "0" and part.startswith("0")):
        raise PatchError(f"bad array index {part!r}")
    index = int(part)
    if index > size or (index == size and not adding):
        raise PatchError(f"array index {index} out of range")
    return index


def apply_ops(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 add/remove/replace applied to a copy of `doc` that copies only the objects and
    arrays the ops change (the rest is shared, `doc` is untouched)."""
    root = copy.copy(doc)
    copied = {id(root)}
    for op in ops:
        path = op["path"]
        if path == "":
            if op["op"] != "replace":
                raise PatchError(f"{op['op']} of the whole document")
            root = op["value"]
            continue
        if not path.startswith("/"):
            raise PatchError(f"bad path {path!r}")
        tokens = path.split("/")[1:]
        node = root
        for token in tokens[:-1]:
            node = _child_for_write(node, token, copied)
        last = tokens[-1]
        kind = op["op"]
        if type(node) is dict:
            key = _unescape(last)
            if kind in ("remove", "replace") and key not in node:
                raise PatchError(f"{kind} of missing member {path}")
            if kind == "remove":
                del node[key]
            elif kind in ("add", "replace"):
                node[key] = op["value"]
            else:
                raise PatchError(f"unexpected op {kind!r}")
        elif type(node) is list:
            index = _index(last, len(node), adding=kind == "add")
            if kind == "add":
                node.insert(index, op["value"])
            elif kind == "remove":
                del node[index]
            elif kind == "replace":
                node[index] = op["value"]
            else:
                raise PatchError(f"unexpected op {kind!r}")
        else:
            raise PatchError(f"path {path} goes through a {type(node).__name__}")
    return root


def make_patch(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[dict[str, Any]]:
    """RFC 6902 operations turning `before` into `after`, verified by applying them."""
    ops: list[dict[str, Any]] = []
    _diff(before, after, "", ops)
    # `==` (C speed, identity first) suffices here: the ops carry values taken from `after`
    if ops and apply_ops(before, ops) != after:
        raise PatchError("the patch does not reproduce the mutated pod")
    return ops


def encode_patch(ops: list[dict[str, Any]]) -> str:
    return base64.b64encode(orjson.dumps(ops)).decode()
