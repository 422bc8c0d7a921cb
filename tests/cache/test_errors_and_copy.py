"""Error classes of KServe's downloader, and copy mode, with real exception objects and files."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from kserve_storage.storage_errors import get_storage_error_message

from webhook.cache.copy import EntryVanished, copy_manifest_files
from webhook.cache.download import classify_error
from webhook.cache.fetch import EXIT_CODES, ErrorKind
from webhook.cache.layout import MANIFEST_NAME, FileEntry, Manifest


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "HeadBucket")


def wrapped(cause: BaseException, protocol: str = "S3") -> RuntimeError:
    """What kserve_storage raises: a RuntimeError with its own message, from the cause."""
    try:
        raise RuntimeError(get_storage_error_message(protocol, cause, "bucket")) from cause
    except RuntimeError as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        pytest.param(wrapped(client_error("403")), ErrorKind.BAD_CREDENTIALS, id="s3-403"),
        pytest.param(
            wrapped(client_error("InvalidAccessKeyId")), ErrorKind.BAD_CREDENTIALS, id="bad-key"
        ),
        pytest.param(
            wrapped(client_error("SignatureDoesNotMatch")),
            ErrorKind.BAD_CREDENTIALS,
            id="bad-secret",
        ),
        pytest.param(wrapped(NoCredentialsError()), ErrorKind.BAD_CREDENTIALS, id="no-creds"),
        pytest.param(wrapped(client_error("NoSuchBucket")), ErrorKind.NOT_FOUND, id="no-bucket"),
        pytest.param(wrapped(client_error("404")), ErrorKind.NOT_FOUND, id="s3-404"),
        pytest.param(
            RuntimeError("Failed to fetch model. No model found in llama."),
            ErrorKind.NOT_FOUND,
            id="empty-prefix",
        ),
        pytest.param(
            RuntimeError("HTTP authentication failed for 'http://x/m.bin'. Verify credentials."),
            ErrorKind.BAD_CREDENTIALS,
            id="http-401",
        ),
        pytest.param(
            RuntimeError("HTTP resource not found at 'http://x/m.bin'."),
            ErrorKind.NOT_FOUND,
            id="http-404",
        ),
        pytest.param(
            wrapped(EndpointConnectionError(endpoint_url="http://127.0.0.1:1")),
            ErrorKind.UNREACHABLE,
            id="unreachable",
        ),
        pytest.param(
            RuntimeError("Failed to download 1 files: a.bin: [Errno 28] No space left on device"),
            ErrorKind.DISK_FULL,
            id="s3-worker-enospc",
        ),
        pytest.param(OSError(errno.ENOSPC, "No space left"), ErrorKind.DISK_FULL, id="enospc"),
        pytest.param(RuntimeError("something else"), ErrorKind.DOWNLOAD_FAILED, id="other"),
    ],
)
def test_classify_error(exc: BaseException, kind: ErrorKind) -> None:
    assert classify_error(exc) is kind


def test_exit_codes_are_distinct_and_documented() -> None:
    codes = [kind.exit_code for kind in ErrorKind]
    assert len(set(codes)) == len(codes)
    assert 0 not in codes
    assert set(EXIT_CODES) == set(ErrorKind)
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    for kind in ErrorKind:
        assert f"| {kind.exit_code} | `{kind.value}` |" in doc


def _entry(tmp_path: Path) -> tuple[Path, dict[str, bytes], Manifest]:
    source = tmp_path / "entry"
    files = {f"shard-{i}.bin": os.urandom(10_000 + i) for i in range(20)}
    files["tok/vocab.txt"] = b"a\nb\n"
    files["empty.bin"] = b""
    for name, body in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(body)
    manifest = Manifest(
        uri="s3://b/m",
        revision="",
        key="m-0123456789abcdef",
        files=tuple(FileEntry(path=n, size=len(b)) for n, b in sorted(files.items())),
        bytes=sum(map(len, files.values())),
        created_at=0.0,
        download_seconds=0.0,
    )
    (source / MANIFEST_NAME).write_text(manifest.to_json())
    return source, files, manifest


def test_copy_copies_the_manifest_files_in_parallel(tmp_path: Path) -> None:
    source, files, manifest = _entry(tmp_path)
    dest = tmp_path / "mnt" / "models"
    dest.mkdir(parents=True)
    (dest / "shard-0.bin").write_bytes(b"stale bytes from an earlier run, longer than before" * 999)

    stats = copy_manifest_files(source, dest, manifest, workers=4)
    copied = {
        p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()
    }
    assert copied == files
    assert stats.files == len(files)
    assert stats.bytes == sum(map(len, files.values()))


def test_copy_of_an_evicted_or_changed_entry_is_refused(tmp_path: Path) -> None:
    source, _, manifest = _entry(tmp_path)
    (source / "shard-3.bin").unlink()
    with pytest.raises(EntryVanished, match="disappeared"):
        copy_manifest_files(source, tmp_path / "a", manifest)
    (source / "shard-3.bin").write_bytes(b"short")
    with pytest.raises(EntryVanished, match="the manifest says"):
        copy_manifest_files(source, tmp_path / "b", manifest)
    evicted = source.rename(tmp_path / "trash")
    with pytest.raises(EntryVanished):
        copy_manifest_files(source, tmp_path / "c", manifest)
    assert evicted.exists()
