"""KServe's own downloader (`kserve_storage.Storage.download`) behind the `Downloader` signature.

The only module that imports `kserve_storage`, and only in a child process that runs one
download (`python -m webhook.cache.download`), so the webhook never loads it and a download
that hangs (a dead worker of its S3 process pool) can be killed with all its processes. Its
errors (and botocore's beneath them) become `FetchError` classes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

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
    """`Storage.download(uri, out_dir)` from `kserve-storage` in a child process it can kill."""
    return ChildDownloader()


def download_in_process(uri: str, out_dir: Path) -> None:
    """`Storage.download` here, its errors as FetchError (or OSError for the cache volume)."""
    from kserve_storage import Storage  # heavy (boto3, google, azure): only when needed

    try:
        Storage.download(uri, str(out_dir))
    except OSError as exc:
        if exc.errno is not None and classify_error(exc) is ErrorKind.DOWNLOAD_FAILED:
            raise  # a plain I/O error on the cache volume: fetch maps it by errno
        raise FetchError(classify_error(exc), _describe(uri, exc)) from exc
    except Exception as exc:
        raise FetchError(classify_error(exc), _describe(uri, exc)) from exc


class ChildDownloader:
    """Runs each download in `python -m webhook.cache.download` and waits for it.

    `abort()` (from the watchdog, or on SIGTERM) kills the child and every process it started
    (KServe's S3 downloader uses a process pool), so a hung download never hangs the fetch.
    The child reports its result as one JSON line on a pipe; `total` is the size of the
    download when the child learnt it (S3 listings), for progress lines.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._attempt = 0
        self._aborted_attempt = -1
        self.total: int | None = None
        self.activity = 0
        """Messages received from the child (started, totals): progress before bytes flow."""

    def __call__(self, uri: str, out_dir: Path) -> None:
        read_fd, write_fd = os.pipe()
        try:
            with self._lock:
                # An abort applies to the attempt it was made for, not to a later one.
                self._attempt += 1
                attempt = self._attempt
                self._proc = subprocess.Popen(  # noqa: S603
                    [sys.executable, "-m", "webhook.cache.download", str(write_fd), uri,
                     str(out_dir)],
                    pass_fds=(write_fd,),
                    stdin=subprocess.DEVNULL,
                )  # fmt: skip
        finally:
            os.close(write_fd)
        result: dict[str, Any] = {}
        with os.fdopen(read_fd, "rb") as pipe:
            for raw in pipe:
                self.activity += 1
                with contextlib.suppress(ValueError):
                    message = json.loads(raw)
                    if "started" in message:
                        continue
                    if "total" in message:
                        self.total = int(message["total"])
                    else:
                        result = message
        code = self._proc.wait()
        if result.get("ok"):
            return
        if self._aborted_attempt == attempt:
            raise FetchError(ErrorKind.DOWNLOAD_FAILED, f"download of {uri} was aborted")
        if result.get("errno") is not None:
            raise OSError(int(result["errno"]), str(result.get("strerror")), result.get("filename"))
        if result.get("kind"):
            raise FetchError(ErrorKind(result["kind"]), str(result.get("message")))
        raise FetchError(
            ErrorKind.DOWNLOAD_FAILED,
            f"the download process of {uri} died (exit status {code}) without a result",
        )

    def abort(self) -> None:
        """Kill the download process and all its descendants; safe to call at any time."""
        with self._lock:
            self._aborted_attempt = self._attempt
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        for pid in [*descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, grandchildren...), from /proc, deepest first."""
    parents: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        entry = proc.name
        if not entry.isdigit():
            continue
        try:
            stat = (proc / "stat").read_bytes()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            parents.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found[::-1]


class _TotalCounter(logging.Handler):
    """Sums the sizes kserve_storage logs while it lists S3 objects (`Found S3 object: ...`)."""

    def __init__(self, report: Any) -> None:
        super().__init__(level=logging.INFO)
        self.total = 0
        self._report = report

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if record.msg == "Found S3 object: %s (%d bytes)" and isinstance(args, tuple):
            with contextlib.suppress(IndexError, TypeError, ValueError):
                self.total += int(str(args[1]))
                self._report({"total": self.total})


def _child_main(argv: list[str]) -> int:
    """The child: one download, its result as JSON on the pipe fd given first."""
    fd, uri, out = int(argv[0]), argv[1], Path(argv[2])
    _die_with_parent()
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    pipe = os.fdopen(fd, "w", encoding="utf-8", buffering=1)

    def report(message: dict[str, Any]) -> None:
        pipe.write(json.dumps(message) + "\n")

    counter = _TotalCounter(report)
    logging.getLogger().addHandler(counter)
    import kserve_storage  # noqa: F401  (the slow part of starting: tell the watchdog we live)

    report({"started": True})
    try:
        download_in_process(uri, out)
    except FetchError as exc:
        report({"kind": exc.kind.value, "message": exc.message})
        return 1
    except OSError as exc:
        report({"errno": exc.errno, "strerror": exc.strerror, "filename": exc.filename})
        return 1
    except BaseException as exc:  # the parent must always learn why
        report({"kind": ErrorKind.DOWNLOAD_FAILED.value, "message": f"{uri}: {exc}"})
        return 1
    report({"ok": True})
    return 0


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the fetch process dies, so no download outlives it."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


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


_UNREACHABLE_HINTS: Final = {
    "s3": " (check AWS_ENDPOINT_URL / S3_ENDPOINT and the network)",
    "hf": " (check HF_ENDPOINT and the network)",
    "gs": " (check the network to storage.googleapis.com, or STORAGE_EMULATOR_HOST)",
    "http": " (check the URL's host and port, the network, and HTTP_PROXY/NO_PROXY)",
    "https": " (check the URL's host and port, the network, and HTTPS_PROXY/NO_PROXY)",
}


def _describe(uri: str, exc: BaseException) -> str:
    kind = classify_error(exc)
    if kind is ErrorKind.UNREACHABLE:
        scheme = urlsplit(uri.strip()).scheme.lower()
        hint = _UNREACHABLE_HINTS.get(scheme, " (check the source's address and the network)")
    else:
        hint = {
            ErrorKind.BAD_CREDENTIALS: " (check the credentials in the pod's ServiceAccount "
            "secret or the cache.kserve.io/secret: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
            "HF_TOKEN, ...)",
            ErrorKind.NOT_FOUND: " (check the storage URI)",
            ErrorKind.DISK_FULL: ": the partial download was removed and nothing was published",
        }.get(kind, "")
    return f"download of {uri} failed: {exc}{hint}"


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
