"""The cache key: one function shared by the webhook and `kserve-cache fetch`.

`key = <slug>-<h16>`: h16 is the first 16 hex digits of sha256(normalized_uri + "\\n" + revision),
slug the last path segment of the URI reduced to [a-z0-9-], at most 40 characters.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final
from urllib.parse import urlsplit, urlunsplit

SLUG_MAX: Final = 40
REVISION_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,63}")
KEY_RE: Final = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?-[0-9a-f]{16}|[0-9a-f]{16}")
_NOT_SLUG: Final = re.compile(r"[^a-z0-9]+")


def normalize_uri(uri: str) -> str:
    """The form of a URI that names the same model however it was written.

    The scheme (and an http(s) host) is lower-cased, surrounding space and trailing slashes
    are dropped; the rest is case-sensitive, as object stores are.
    """
    text = uri.strip()
    parts = urlsplit(text)
    if not parts.scheme:
        return text.rstrip("/") or text
    scheme = parts.scheme.lower()
    netloc = parts.netloc.lower() if scheme in ("http", "https") else parts.netloc
    path = parts.path.rstrip("/")
    return urlunsplit((scheme, netloc, path, parts.query, parts.fragment))


def slug_of(uri: str) -> str:
    """Readable part of the key: the last path segment, reduced to `[a-z0-9-]`."""
    parts = urlsplit(uri)
    tail = parts.path.rstrip("/").rsplit("/", 1)[-1] or parts.netloc
    slug = _NOT_SLUG.sub("-", tail.lower()).strip("-")
    return slug[:SLUG_MAX].strip("-")


def cache_key(uri: str, revision: str = "") -> str:
    """The cache key of a model URI at a revision (the empty string for none)."""
    normalized = normalize_uri(uri)
    digest = hashlib.sha256(f"{normalized}\n{revision}".encode()).hexdigest()[:16]
    slug = slug_of(normalized)
    return f"{slug}-{digest}" if slug else digest


def is_valid_key(key: str) -> bool:
    """True for a string `cache_key` can produce; guards paths built from a key."""
    return KEY_RE.fullmatch(key) is not None


def is_valid_revision(revision: str) -> bool:
    return REVISION_RE.fullmatch(revision) is not None
