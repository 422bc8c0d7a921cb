"""Where the webhook learns a Namespace's labels and annotations (the admin-owned policy layer).

`NamespaceSource.lookup` is awaited on the admission path and must answer from memory;
`StaticNamespaces` serves fixed data (no cluster, `preview`, tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class NamespaceView:
    """What is known of one Namespace. `annotations is None`: unknown (no cluster, not found)."""

    name: str
    annotations: Mapping[str, str] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    warning: str | None = None


class NamespaceSource(Protocol):
    async def lookup(self, name: str) -> NamespaceView: ...

    @property
    def synced(self) -> bool: ...


class StaticNamespaces:
    """Fixed namespace annotations, keyed by namespace name; `None` key applies to any."""

    def __init__(self, annotations: Mapping[str | None, Mapping[str, str]] | None = None) -> None:
        self._annotations = dict(annotations or {})

    async def lookup(self, name: str) -> NamespaceView:
        return self.get(name)

    def get(self, name: str) -> NamespaceView:
        found = self._annotations.get(name, self._annotations.get(None))
        return NamespaceView(name=name, annotations=dict(found) if found is not None else None)

    @property
    def synced(self) -> bool:
        return True
