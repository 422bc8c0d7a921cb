"""Source fingerprints against local stand-ins: moto S3 with overwritten objects, an HTTP
server with ETags, a stub of the hub's revision endpoint, local folders, dead endpoints."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.cache.conftest import S3
from webhook.cache.fingerprint import (
    Fingerprint,
    Unavailable,
    fingerprint_scheme,
    source_fingerprint,
)

from .helpers import put_model
from .stubs import StubServer


@pytest.mark.parametrize(
    ("uri", "scheme"),
    [
        pytest.param("s3://b/p", "s3", id="s3"),
        pytest.param("gs://b/p", "gs", id="gcs"),
        pytest.param("hf://org/model", "hf", id="hf"),
        pytest.param("https://h/x.bin", "http", id="https"),
        pytest.param("file:///models/x", "file", id="file"),
        pytest.param("/mnt/pvc/x", "file", id="pvc-path"),
        pytest.param("https://acct.blob.core.windows.net/c/p", "azure", id="azure"),
        pytest.param("oci://reg/img:tag", None, id="oci-none"),
        pytest.param("hdfs://nn/p", None, id="hdfs-none"),
    ],
)
def test_scheme_families(uri: str, scheme: str | None) -> None:
    assert fingerprint_scheme(uri) == scheme


def test_no_cheap_fingerprint_is_none() -> None:
    assert source_fingerprint("oci://registry/model:latest", env={}) is None


def test_s3_changes_when_an_object_is_overwritten(s3: S3) -> None:
    prefix = f"fp-{os.urandom(4).hex()}"
    put_model(s3, prefix, {"config.json": b"{}", "w.bin": b"a" * 1000})
    env = s3.env()
    first = source_fingerprint(f"s3://models/{prefix}", env=env)
    again = source_fingerprint(f"s3://models/{prefix}", env=env)
    assert isinstance(first, Fingerprint)
    assert isinstance(again, Fingerprint)
    assert again.value == first.value
    assert first.objects == 2
    assert first.calls == 1
    # Same size, other bytes: only the ETag tells.
    put_model(s3, prefix, {"w.bin": b"b" * 1000})
    changed = source_fingerprint(f"s3://models/{prefix}", env=env)
    assert isinstance(changed, Fingerprint)
    assert changed.value != first.value
    # A new file under the prefix changes it too.
    put_model(s3, prefix, {"extra.txt": b"x"})
    grown = source_fingerprint(f"s3://models/{prefix}", env=env)
    assert isinstance(grown, Fingerprint)
    assert grown.value not in (first.value, changed.value)
    assert grown.objects == 3


def test_s3_exact_object_and_sibling_prefix(s3: S3) -> None:
    prefix = f"fp-{os.urandom(4).hex()}"
    put_model(s3, prefix, {"model.bin": b"m", "model.bin.bak": b"bak"})
    exact = source_fingerprint(f"s3://models/{prefix}/model.bin", env=s3.env())
    assert isinstance(exact, Fingerprint)
    assert exact.objects == 1  # as kserve-storage: the exact key is the whole model


def test_s3_honours_s3_endpoint_variable(s3: S3) -> None:
    prefix = f"fp-{os.urandom(4).hex()}"
    put_model(s3, prefix, {"w.bin": b"w"})
    env = s3.env()
    del env["AWS_ENDPOINT_URL"]
    env["S3_ENDPOINT"] = s3.endpoint.removeprefix("http://")
    env["S3_USE_HTTPS"] = "0"
    assert isinstance(source_fingerprint(f"s3://models/{prefix}", env=env), Fingerprint)


def test_s3_missing_prefix_and_bad_credentials(s3: S3) -> None:
    missing = source_fingerprint(f"s3://models/nothing-{os.urandom(4).hex()}", env=s3.env())
    assert isinstance(missing, Unavailable)
    assert missing.reason == "not-found"
    denied = source_fingerprint("s3://models/llama", env=s3.env(AWS_SECRET_ACCESS_KEY="wrong"))
    assert isinstance(denied, Unavailable)
    assert denied.reason == "bad-credentials"


def test_s3_unreachable_is_typed_and_quick(s3: S3, dead_port: int) -> None:
    env = s3.env(AWS_ENDPOINT_URL=f"http://127.0.0.1:{dead_port}")
    result = source_fingerprint("s3://models/llama", env=env, timeout=1.0)
    assert isinstance(result, Unavailable)
    assert result.reason == "unreachable"
    assert str(dead_port) in result.message


def test_http_etag_and_last_modified(stub: StubServer) -> None:
    path = f"/m-{os.urandom(4).hex()}.bin"
    stub.put(path, b"one" * 100, modified=1_700_000_000)
    first = source_fingerprint(stub.url(path), env={})
    assert isinstance(first, Fingerprint)
    before = stub.count()
    again = source_fingerprint(stub.url(path), env={})
    assert stub.count() - before == 1  # one HEAD
    assert stub.requests[-1] == ("HEAD", path)
    assert isinstance(again, Fingerprint)
    assert again.value == first.value
    stub.put(path, b"two" * 100, modified=1_700_000_100)  # same length, new body
    changed = source_fingerprint(stub.url(path), env={})
    assert isinstance(changed, Fingerprint)
    assert changed.value != first.value


def test_http_without_validators_has_no_fingerprint(stub: StubServer) -> None:
    path = f"/plain-{os.urandom(4).hex()}.bin"
    stub.put(path, b"x", modified=0)
    stub.validators = False
    try:
        assert source_fingerprint(stub.url(path), env={}) is None
    finally:
        stub.validators = True


def test_http_missing_and_unreachable(stub: StubServer, dead_port: int) -> None:
    missing = source_fingerprint(stub.url("/nope.bin"), env={})
    assert isinstance(missing, Unavailable)
    assert missing.reason == "not-found"
    dead = source_fingerprint(f"http://127.0.0.1:{dead_port}/m.bin", env={}, timeout=1.0)
    assert isinstance(dead, Unavailable)
    assert dead.reason == "unreachable"


def test_hf_commit_via_hf_endpoint(stub: StubServer) -> None:
    repo = f"org/model-{os.urandom(3).hex()}"
    stub.hub[(repo, "main")] = "a" * 40
    env = {"HF_ENDPOINT": stub.url()}
    first = source_fingerprint(f"hf://{repo}", env=env)
    assert isinstance(first, Fingerprint)
    assert first.commit == "a" * 40
    assert first.pinned_uri == f"hf://{repo}:{'a' * 40}"
    assert stub.requests[-1][1].startswith(f"/api/models/{repo}/revision/main")
    stub.hub[(repo, "main")] = "b" * 40  # the branch moved
    moved = source_fingerprint(f"hf://{repo}", env=env)
    assert isinstance(moved, Fingerprint)
    assert moved.value != first.value
    stub.hub[(repo, "v1.0")] = "c" * 40
    tagged = source_fingerprint(f"hf://{repo}:v1.0", env=env)
    assert isinstance(tagged, Fingerprint)
    assert tagged.commit == "c" * 40


def test_hf_missing_repo_and_unreachable_hub(stub: StubServer, dead_port: int) -> None:
    missing = source_fingerprint("hf://org/absent", env={"HF_ENDPOINT": stub.url()})
    assert isinstance(missing, Unavailable)
    assert missing.reason == "not-found"
    dead = source_fingerprint(
        "hf://org/m", env={"HF_ENDPOINT": f"http://127.0.0.1:{dead_port}"}, timeout=1.0
    )
    assert isinstance(dead, Unavailable)
    assert dead.reason == "unreachable"


def test_local_folder_names_sizes_mtimes(tmp_path: Path) -> None:
    src = tmp_path / "m"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"a")
    (src / "sub" / "b.bin").write_bytes(b"b")
    first = source_fingerprint(f"file://{src}", env={})
    assert isinstance(first, Fingerprint)
    assert first.calls == 0
    assert first.objects == 2
    plain = source_fingerprint(str(src), env={})
    assert isinstance(plain, Fingerprint)
    assert plain.value == first.value
    later = time.time() + 10
    os.utime(src / "a.bin", (later, later))
    touched = source_fingerprint(f"file://{src}", env={})
    assert isinstance(touched, Fingerprint)
    assert touched.value != first.value
    missing = source_fingerprint(f"file://{tmp_path / 'none'}", env={})
    assert isinstance(missing, Unavailable)
    assert missing.reason == "not-found"
