"""An admission chain as the API server runs it, for pods: in-tree mutating plugins, then the
mutating webhooks in the order of their names, then one re-invocation round for the
`IfNeeded` webhooks whose object changed since their last call (after which the in-tree
plugins run again), then the validators. Every step returns a new pod; webhook answers are
JSON patches applied with the `jsonpatch` library, as the API server applies them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Pod = dict[str, Any]


@dataclass(frozen=True)
class Mutator:
    name: str
    mutate: Callable[[Pod], Pod]
    reinvoke: bool = False  # reinvocationPolicy: IfNeeded


@dataclass(frozen=True)
class Validator:
    name: str
    check: Callable[[Pod], list[str]]


@dataclass
class Outcome:
    pod: Pod
    calls: list[tuple[int, str, bool]] = field(default_factory=list)  # (round, name, changed)
    errors: list[str] = field(default_factory=list)

    def called(self, name: str) -> int:
        return sum(1 for _, n, _ in self.calls if n == name)


def _run(step: Mutator, pod: Pod, round_: int, outcome: Outcome) -> Pod:
    new = step.mutate(copy.deepcopy(pod))
    outcome.calls.append((round_, step.name, new != pod))
    return new


def admit(
    pod: Pod,
    *,
    in_tree: list[Mutator],
    webhooks: list[Mutator],
    validators: list[Validator],
) -> Outcome:
    outcome = Outcome(pod=copy.deepcopy(pod))
    current = outcome.pod
    for plugin in in_tree:
        current = _run(plugin, current, 1, outcome)
    ordered = sorted(webhooks, key=lambda w: w.name)
    last_output: dict[str, Pod] = {}
    changed = False
    for hook in ordered:
        new = _run(hook, current, 1, outcome)
        changed = changed or new != current
        current = last_output[hook.name] = new
    if changed:
        reinvoked = False
        for hook in ordered:
            if hook.reinvoke and current != last_output[hook.name]:
                current = _run(hook, current, 2, outcome)
                reinvoked = True
        if reinvoked:
            for plugin in in_tree:
                current = _run(plugin, current, 2, outcome)
    outcome.pod = current
    for validator in validators:
        outcome.errors += [f"{validator.name}: {e}" for e in validator.check(current)]
    return outcome
