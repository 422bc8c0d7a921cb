"""The cache key: one function shared by the webhook and `kserve-cache fetch`.

`key = <slug>-<h16>`: h16 is the first 16 hex digits of sha256(normalized_uri + "\\n" + revision),
or of sha256(normalized_uri + "\\n" + revision + "\\n" + endpoint) when the source names an
endpoint; slug is the last path segment of the URI reduced to [a-z0-9-], at most 40 characters.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
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
    return _normalized(uri)[0]


def _normalized(uri: str) -> tuple[str, str | None]:
    """`normalize_uri(uri)`, and the tail `slug_of` takes from it when that is known without
    parsing it again (else None): `cache_key` needs both, for every pod."""
    text = uri.strip()
    parts = urlsplit(text)
    if not parts.scheme:
        return text.rstrip("/") or text, None
    scheme = parts.scheme.lower()
    netloc = parts.netloc.lower() if scheme in ("http", "https") else parts.netloc
    path = parts.path.rstrip("/")
    if not netloc or not netloc.isascii() or "[" in netloc or path[:1] not in ("", "/"):
        return urlunsplit((scheme, netloc, path, parts.query, parts.fragment)), None
    # What urlunsplit returns for these parts; urlsplit of it gives back `netloc` and `path`
    # (an ASCII netloc without brackets has nothing its checks refuse or change).
    normalized = f"{scheme}://{netloc}{path}"
    if parts.query:
        normalized += "?" + parts.query
    if parts.fragment:
        normalized += "#" + parts.fragment
    return normalized, path.rsplit("/", 1)[-1] or netloc


def slug_of(uri: str) -> str:
    """Readable part of the key: the last path segment, reduced to `[a-z0-9-]`."""
    parts = urlsplit(uri)
    return _slug(parts.path.rstrip("/").rsplit("/", 1)[-1] or parts.netloc)


def _slug(tail: str) -> str:
    slug = _NOT_SLUG.sub("-", tail.lower()).strip("-")
    return slug[:SLUG_MAX].strip("-")


def cache_key(uri: str, revision: str = "", endpoint: str = "") -> str:
    """The cache key of a model URI at a revision (the empty string for none).

    `endpoint` (`scheme://host[:port]`, see `source_endpoint`) tells apart the same path on two
    object stores; without one the key is the one earlier releases computed.
    """
    normalized, tail = _normalized(uri)
    text = f"{normalized}\n{revision}\n{endpoint}" if endpoint else f"{normalized}\n{revision}"
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    slug = slug_of(normalized) if tail is None else _slug(tail)
    return f"{slug}-{digest}" if slug else digest


def is_valid_key(key: str) -> bool:
    """True for a string `cache_key` can produce; guards paths built from a key."""
    return KEY_RE.fullmatch(key) is not None


def is_valid_revision(revision: str) -> bool:
    return REVISION_RE.fullmatch(revision) is not None


# The variables that name a scheme's endpoint, in the order KServe's downloader honours them.
_ENDPOINT_VARS: Final[dict[str, tuple[str, ...]]] = {
    "s3": ("AWS_ENDPOINT_URL", "S3_ENDPOINT"),
    "hf": ("HF_ENDPOINT",),
    "gs": ("STORAGE_EMULATOR_HOST",),
}


def endpoint_variables(uri: str) -> tuple[str, ...]:
    """The environment variables that may name the endpoint of `uri`'s scheme."""
    return _ENDPOINT_VARS.get(urlsplit(uri.strip()).scheme.lower(), ())


def normalize_endpoint(raw: str, *, default_scheme: str = "https") -> str:
    """`scheme://host[:port]`, lower case, no path, no trailing slash; "" for an empty value."""
    text = raw.strip()
    if not text:
        return ""
    if "://" not in text:
        text = f"{default_scheme}://{text}"
    parts = urlsplit(text)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}" if parts.netloc else ""


def source_endpoint(uri: str, env: Mapping[str, str]) -> str:
    """The endpoint the downloader will use for `uri` given these variables ("" for none).

    For `s3://`: `AWS_ENDPOINT_URL`, else `S3_ENDPOINT` (`http` when `S3_USE_HTTPS=0`, else
    `https`, when the value has no scheme); for `hf://`: `HF_ENDPOINT`; `gs://`: the emulator
    host. Other schemes have none.
    """
    for name in endpoint_variables(uri):
        value = env.get(name, "")
        if not value.strip():
            continue
        scheme = "http" if name == "S3_ENDPOINT" and env.get("S3_USE_HTTPS") == "0" else "https"
        if name == "STORAGE_EMULATOR_HOST":
            scheme = "http"
        return normalize_endpoint(value, default_scheme=scheme)
    return ""
