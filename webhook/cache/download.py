"""KServe's own downloader (`kserve_storage.Storage.download`) behind the `Downloader` signature.

The only module that imports `kserve_storage`, and only when a download runs, so the webhook
process never loads it. Its errors (and botocore's beneath them) become `FetchError` classes.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from webhook.cache.fetch import Downloader, ErrorKind, FetchError

logger = logging.getLogger(__name__)

_CREDENTIAL_CODES: Final = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "ExpiredToken",
        "InvalidToken",
        "AuthorizationHeaderMalformed",
        "403",
        "401",
    }
)
_MISSING_CODES: Final = frozenset({"NoSuchBucket", "NoSuchKey", "404", "NotFound"})
_CREDENTIAL_TYPES: Final = frozenset(
    {
        "NoCredentialsError",
        "PartialCredentialsError",
        "DefaultCredentialsError",
        "GoogleAuthError",
        "ClientAuthenticationError",
        "GatedRepoError",
        "Forbidden",
    }
)
_MISSING_TYPES: Final = frozenset(
    {"NotFound", "ResourceNotFoundError", "RepositoryNotFoundError", "RevisionNotFoundError"}
)
# Phrases of kserve_storage's own messages (storage_errors.py, the http and local downloaders).
_CREDENTIAL_WORDS: Final = (
    "authentication failed",
    "invalid aws credentials",
    "access denied",
    "invalidaccesskeyid",
    "signaturedoesnotmatch",
    "forbidden",
    "(403)",
)
_MISSING_WORDS: Final = (
    "not found",
    "does not exist",
    "no model found",
    "nosuchkey",
    "nosuchbucket",
    "(404)",
)
_DISK_WORDS: Final = ("no space left on device", "[errno 28]", "disk quota exceeded")
_UNREACHABLE_WORDS: Final = ("failed to connect", "could not connect", "connection refused")


def default_downloader() -> Downloader:
    """`Storage.download(uri, out_dir)` from `kserve-storage`, honouring KServe's variables."""

    def download(uri: str, out_dir: Path) -> None:
        from kserve_storage import Storage  # heavy (boto3, google, azure): only when needed

        try:
            Storage.download(uri, str(out_dir))
        except OSError as exc:
            if exc.errno is not None and classify_error(exc) is ErrorKind.DOWNLOAD_FAILED:
                raise  # a plain I/O error on the cache volume: fetch maps it by errno
            raise FetchError(classify_error(exc), _describe(uri, exc)) from exc
        except Exception as exc:
            raise FetchError(classify_error(exc), _describe(uri, exc)) from exc

    return download


def classify_error(exc: BaseException) -> ErrorKind:
    """The failure class of a downloader exception, from its cause chain and message."""
    chain = list(_chain(exc))
    for err in chain:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return ErrorKind.DISK_FULL
        code = _client_error_code(err)
        if code in _CREDENTIAL_CODES:
            return ErrorKind.BAD_CREDENTIALS
        if code in _MISSING_CODES:
            return ErrorKind.NOT_FOUND
        name = type(err).__name__
        if name in _CREDENTIAL_TYPES:
            return ErrorKind.BAD_CREDENTIALS
        if name in _MISSING_TYPES:
            return ErrorKind.NOT_FOUND
        if name in ("EndpointConnectionError", "ConnectionError", "ConnectTimeoutError"):
            return ErrorKind.UNREACHABLE
    text = " ".join(str(err) for err in chain).lower()
    for kind, words in (
        (ErrorKind.DISK_FULL, _DISK_WORDS),
        (ErrorKind.BAD_CREDENTIALS, _CREDENTIAL_WORDS),
        (ErrorKind.NOT_FOUND, _MISSING_WORDS),
        (ErrorKind.UNREACHABLE, _UNREACHABLE_WORDS),
    ):
        if any(word in text for word in words):
            return kind
    return ErrorKind.DOWNLOAD_FAILED


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _client_error_code(err: BaseException) -> str:
    response = getattr(err, "response", None)
    if not isinstance(response, dict):
        return ""
    error = response.get("Error", {})
    code = error.get("Code", "") if isinstance(error, dict) else ""
    return str(code)


def _describe(uri: str, exc: BaseException) -> str:
    kind = classify_error(exc)
    hint = {
        ErrorKind.BAD_CREDENTIALS: " (check the credentials in the pod's ServiceAccount secret "
        "or the cache.kserve.io/secret: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, HF_TOKEN, ...)",
        ErrorKind.NOT_FOUND: " (check the storage URI)",
        ErrorKind.UNREACHABLE: " (check AWS_ENDPOINT_URL / S3_ENDPOINT and the network)",
        ErrorKind.DISK_FULL: ": the partial download was removed and nothing was published",
    }.get(kind, "")
    return f"download of {uri} failed: {exc}{hint}"
