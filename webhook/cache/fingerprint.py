"""Cheap fingerprints of a model source, taken without downloading it (one metadata call).

A fingerprint changes when the model at a URI changes: S3 (keys, sizes, ETags of the listing),
GCS (names, sizes, generations), Azure blobs (names, sizes, ETags), `hf://` (the commit the
revision resolves to), HTTP(S) (ETag, Last-Modified, Content-Length of a HEAD), local and PVC
paths (names, sizes, mtimes). A scheme without a cheap fingerprint gives None; a source that
cannot be asked gives `Unavailable`, which the caller turns into a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from webhook.keys import source_endpoint

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = 5.0
"""Seconds one fingerprint may take: a start must not wait long on a slow source."""

HF_DEFAULT_ENDPOINT: Final = "https://huggingface.co"
_HF_COMMIT_RE: Final = re.compile(r"[0-9a-f]{40}")
# Azure blob URIs as KServe's downloader recognises them.
_AZURE_RE: Final = re.compile(r"https://(.+?)\.blob\.core\.windows\.net/([^/]+)/?(.*)")


@dataclass(frozen=True)
class Fingerprint:
    """What the source holds now. Equal values mean the same model (as far as the store says).

    `pinned_uri` downloads exactly this state when the scheme can name one (`hf://o/m:<sha>`),
    else "". `calls` is the number of requests it took.
    """

    scheme: str
    value: str
    commit: str = ""
    pinned_uri: str = ""
    objects: int = 0
    calls: int = 1
    seconds: float = 0.0


@dataclass(frozen=True)
class Unavailable:
    """The source could not be asked; `reason`: unreachable, bad-credentials, not-found, error."""

    scheme: str
    reason: str
    message: str
    seconds: float = 0.0


FingerprintResult = Fingerprint | Unavailable | None


def fingerprint_scheme(uri: str) -> str | None:
    """The fingerprint family of a URI, or None when it has no cheap fingerprint."""
    text = uri.strip()
    if _AZURE_RE.match(text):
        return "azure"
    scheme = urlsplit(text).scheme.lower()
    if scheme in ("s3", "gs", "hf"):
        return scheme
    if scheme in ("http", "https"):
        return "http"
    if scheme == "file" or (not scheme and text.startswith("/")):
        return "file"
    return None  # oci://, git, hdfs://, ms://, ... : no cheap, reliable fingerprint


def source_fingerprint(
    uri: str, *, env: Mapping[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT
) -> FingerprintResult:
    """Ask the source for its fingerprint; never raises for a source problem."""
    variables = os.environ if env is None else env
    scheme = fingerprint_scheme(uri)
    if scheme is None:
        return None
    began = time.monotonic()
    func = _FUNCS[scheme]
    try:
        result = func(uri.strip(), variables, timeout)
    except _SourceProblem as exc:
        return Unavailable(scheme, exc.reason, exc.message, time.monotonic() - began)
    except Exception as exc:  # a library's surprise must not fail a start that can be served
        logger.debug("fingerprint of %s failed", uri, exc_info=True)
        message = f"{type(exc).__name__}: {exc}"
        return Unavailable(scheme, _classify(exc), message, time.monotonic() - began)
    if result is None:
        return None
    return Fingerprint(
        scheme=result.scheme,
        value=result.value,
        commit=result.commit,
        pinned_uri=result.pinned_uri,
        objects=result.objects,
        calls=result.calls,
        seconds=round(time.monotonic() - began, 4),
    )


class _SourceProblem(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _digest(rows: Iterable[Iterable[object]]) -> str:
    """sha256 of a sorted listing, one tab-separated row per object."""
    lines = sorted("\t".join(str(c) for c in row) for row in rows)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _classify(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc).lower()
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403) or "forbidden" in text or "accessdenied" in text.replace(" ", ""):
        return "bad-credentials"
    if status == 404 or "notfound" in name.lower() or "nosuch" in text:
        return "not-found"
    if any(w in name for w in ("Connect", "Timeout", "Endpoint")) or "connection" in text:
        return "unreachable"
    return "error"


# --- S3 ------------------------------------------------------------------------------------


def _s3(uri: str, env: Mapping[str, str], timeout: float) -> Fingerprint | None:
    import boto3  # type: ignore[import-untyped]
    from botocore import UNSIGNED  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]
    from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

    parts = urlsplit(uri)
    bucket, prefix = parts.netloc, parts.path.lstrip("/")
    config = Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"max_attempts": 1, "mode": "standard"},
    )
    if env.get("awsAnonymousCredential", "").lower() == "true":
        config = config.merge(Config(signature_version=UNSIGNED))
    if env.get("S3_USER_VIRTUAL_BUCKET", "").lower() == "true":
        config = config.merge(Config(s3={"addressing_style": "virtual"}))
    kwargs: dict[str, Any] = {"config": config}
    endpoint = env.get("AWS_ENDPOINT_URL", "").strip() or source_endpoint(uri, env)
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    verify = env.get("S3_VERIFY_SSL", "")
    if verify:
        kwargs["verify"] = verify.lower() not in ("0", "false")
    if env.get("AWS_CA_BUNDLE"):
        kwargs["verify"] = env["AWS_CA_BUNDLE"]
    session = boto3.session.Session(
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
        region_name=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or None,
    )
    client = session.client("s3", **kwargs)
    rows: list[tuple[str, int, str]] = []
    calls = 0
    try:
        token: str | None = None
        while True:
            request: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
            if token:
                request["ContinuationToken"] = token
            page = client.list_objects_v2(**request)
            calls += 1
            for obj in page.get("Contents", []):
                key, size = str(obj["Key"]), int(obj["Size"])
                # The objects kserve-storage downloads: no folder markers or empty objects;
                # an exact key match is that one object only.
                if key.endswith("/") or size == 0:
                    continue
                if key == prefix:
                    rows = [(key, size, str(obj.get("ETag", "")))]
                    token = None
                    break
                rows.append((key, size, str(obj.get("ETag", ""))))
            else:
                token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                break
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchBucket", "NoSuchKey", "404"):
            raise _SourceProblem("not-found", f"s3://{bucket}: {code}") from exc
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            raise _SourceProblem("bad-credentials", f"s3://{bucket}: {code}") from exc
        raise _SourceProblem("error", f"s3://{bucket}: {exc}") from exc
    except BotoCoreError as exc:
        raise _SourceProblem(_classify(exc), f"{endpoint or 's3'}: {exc}") from exc
    finally:
        client.close()
    if not rows:
        raise _SourceProblem("not-found", f"no objects under {uri}")
    return Fingerprint("s3", f"s3:{_digest(rows)}", objects=len(rows), calls=calls)


# --- Hugging Face --------------------------------------------------------------------------


def hf_repo_revision(uri: str) -> tuple[str, str]:
    """`hf://owner/model[:revision]` -> (`owner/model`, revision or "main")."""
    rest = uri.strip()[len("hf://") :]
    parts = rest.split("/")
    if len(parts) != 2 or not all(parts):
        raise _SourceProblem("error", f"not a Hugging Face URI: {uri!r}")
    model, _, revision = parts[1].partition(":")
    return f"{parts[0]}/{model}", revision or "main"


def _hf(uri: str, env: Mapping[str, str], timeout: float) -> Fingerprint | None:
    import httpx

    repo, revision = hf_repo_revision(uri)
    endpoint = (env.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")
    headers = {}
    token = env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    # The endpoint huggingface_hub's `model_info(repo, revision=...)` calls; `expand=sha`
    # keeps the answer small. A plain GET keeps the hub library (and its global
    # configuration read at import time) out of the start path.
    url = f"{endpoint}/api/models/{repo}/revision/{_quote(revision)}"
    try:
        response = httpx.get(
            url, params={"expand[]": "sha"}, headers=headers, timeout=timeout,
            follow_redirects=True,
        )  # fmt: skip
    except httpx.HTTPError as exc:
        raise _SourceProblem("unreachable", f"{endpoint}: {exc}") from exc
    if response.status_code in (401, 403):
        raise _SourceProblem("bad-credentials", f"{repo}: HTTP {response.status_code}")
    if response.status_code == 404:
        raise _SourceProblem("not-found", f"{repo}@{revision}: HTTP 404")
    if response.status_code != 200:
        raise _SourceProblem("error", f"{repo}@{revision}: HTTP {response.status_code}")
    try:
        sha = str(response.json()["sha"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _SourceProblem("error", f"{repo}@{revision}: no commit in the answer") from exc
    if not _HF_COMMIT_RE.fullmatch(sha):
        raise _SourceProblem("error", f"{repo}@{revision}: {sha!r} is not a commit sha")
    return Fingerprint(
        "hf", f"hf:{sha}", commit=sha, pinned_uri=f"hf://{repo}:{sha}", objects=0, calls=1
    )


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


# --- HTTP(S) -------------------------------------------------------------------------------


def _http(uri: str, env: Mapping[str, str], timeout: float) -> Fingerprint | None:
    import httpx

    host = urlsplit(uri).hostname or ""
    # The `<host>-headers` variable kserve-storage sends with its GET.
    try:
        headers = {str(k): str(v) for k, v in json.loads(env.get(f"{host}-headers", "{}")).items()}
    except (ValueError, AttributeError):
        headers = {}
    try:
        response = httpx.head(uri, headers=headers, timeout=timeout, follow_redirects=True)
    except httpx.HTTPError as exc:
        raise _SourceProblem("unreachable", f"{host}: {exc}") from exc
    if response.status_code in (401, 403):
        raise _SourceProblem("bad-credentials", f"{uri}: HTTP {response.status_code}")
    if response.status_code == 404:
        raise _SourceProblem("not-found", f"{uri}: HTTP 404")
    if response.status_code >= 400:
        raise _SourceProblem("error", f"{uri}: HTTP {response.status_code}")
    etag = response.headers.get("etag", "")
    modified = response.headers.get("last-modified", "")
    length = response.headers.get("content-length", "")
    if not etag and not modified:
        # Content-Length alone misses a same-size replacement: not a fingerprint.
        logger.info("%s sends neither ETag nor Last-Modified: no cheap fingerprint", uri)
        return None
    calls = 1 + len(response.history)
    row = [(etag, modified, length)]
    return Fingerprint("http", f"http:{_digest(row)}", objects=1, calls=calls)


# --- local and PVC paths -------------------------------------------------------------------


def _file(uri: str, env: Mapping[str, str], timeout: float) -> Fingerprint | None:
    del env, timeout  # local: no endpoint, no network
    path = Path(uri[len("file://") :] if uri.startswith("file://") else uri)
    if not path.exists():
        raise _SourceProblem("not-found", f"{path} does not exist")
    rows: list[tuple[str, int, int]] = []
    if path.is_file():
        st = path.stat()
        rows.append((path.name, st.st_size, st.st_mtime_ns))
    else:
        for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
            dirnames.sort()
            for name in filenames:
                full = Path(dirpath) / name
                try:
                    st = full.stat()
                except FileNotFoundError:
                    continue
                rows.append((full.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns))
    if not rows:
        raise _SourceProblem("not-found", f"no files in {path}")
    return Fingerprint("file", f"file:{_digest(rows)}", objects=len(rows), calls=0)


# --- GCS and Azure -------------------------------------------------------------------------


def _gs(uri: str, env: Mapping[str, str], timeout: float) -> Fingerprint | None:
    from google.cloud import storage  # type: ignore[import-untyped,attr-defined,unused-ignore]

    parts = urlsplit(uri)
    bucket, prefix = parts.netloc, parts.path.lstrip("/")
    if env.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        anonymous = AnonymousCredentials()  # type: ignore[no-untyped-call]
        client = storage.Client(credentials=anonymous, project="kserve-cache")
    else:
        client = storage.Client()
    rows = [
        (b.name, b.size, b.generation)
        for b in client.list_blobs(bucket, prefix=prefix, timeout=timeout)
        if not b.name.endswith("/") and b.size
    ]
    if not rows:
        raise _SourceProblem("not-found", f"no objects under {uri}")
    return Fingerprint("gs", f"gs:{_digest(rows)}", objects=len(rows), calls=1)


def _azure(uri: str, env: Mapping[str, str], timeout: float) -> Fingerprint | None:
    from azure.storage.blob import ContainerClient

    match = _AZURE_RE.match(uri)
    if match is None:
        return None
    account, container, prefix = match.groups()
    credential: Any = env.get("AZURE_STORAGE_ACCESS_KEY") or None
    if credential is None and env.get("AZURE_CLIENT_SECRET"):
        from azure.identity import ClientSecretCredential

        credential = ClientSecretCredential(
            env.get("AZURE_TENANT_ID", ""),
            env.get("AZURE_CLIENT_ID", ""),
            env["AZURE_CLIENT_SECRET"],
        )
    client = ContainerClient(
        f"https://{account}.blob.core.windows.net", container, credential=credential
    )
    with client:
        rows = [
            (b.name, b.size, b.etag)
            for b in client.list_blobs(name_starts_with=prefix, timeout=int(timeout) or 1)
            if b.size
        ]
    if not rows:
        raise _SourceProblem("not-found", f"no blobs under {uri}")
    return Fingerprint("azure", f"azure:{_digest(rows)}", objects=len(rows), calls=1)


_FUNCS: Final[dict[str, Callable[[str, Mapping[str, str], float], Fingerprint | None]]] = {
    "s3": _s3,
    "hf": _hf,
    "http": _http,
    "file": _file,
    "gs": _gs,
    "azure": _azure,
}


def fingerprint_to_dict(result: FingerprintResult) -> dict[str, Any] | None:
    """For result lines and records."""
    if result is None:
        return None
    if isinstance(result, Unavailable):
        return {"scheme": result.scheme, "unavailable": result.reason, "message": result.message}
    data: dict[str, Any] = {"scheme": result.scheme, "value": result.value}
    if result.commit:
        data["commit"] = result.commit
    data.update(objects=result.objects, calls=result.calls, seconds=result.seconds)
    return data
