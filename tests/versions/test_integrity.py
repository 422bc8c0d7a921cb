"""Per-file sha256, the manifest digest, and the size-only and full checks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from webhook.cache.integrity import (
    FileDigest,
    IntegrityError,
    canonical_manifest,
    hash_tree,
    manifest_digest,
    parse_digest,
    verify_full,
    verify_sizes,
)


def _model(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_bytes(b'{"a": 1}')
    (root / "sub" / "w.bin").write_bytes(bytes(range(256)) * 4096)
    (root / ".kserve-cache.json").write_text("{}")
    return root


def test_hash_tree_matches_hashlib(tmp_path: Path) -> None:
    root = _model(tmp_path / "m")
    files = hash_tree(root, skip={".kserve-cache.json"})
    assert [f.path for f in files] == ["config.json", "sub/w.bin"]
    w = (root / "sub" / "w.bin").read_bytes()
    assert files[1] == FileDigest("sub/w.bin", len(w), hashlib.sha256(w).hexdigest())


def test_digest_names_content_not_order_or_download(tmp_path: Path) -> None:
    a = hash_tree(_model(tmp_path / "a"), skip={".kserve-cache.json"})
    b = hash_tree(_model(tmp_path / "b"), skip={".kserve-cache.json"})
    assert manifest_digest(a) == manifest_digest(b) == manifest_digest(tuple(reversed(a)))
    expected = "sha256:" + hashlib.sha256(canonical_manifest(a)).hexdigest()
    assert manifest_digest(a) == expected
    (tmp_path / "b" / "config.json").write_bytes(b'{"a": 2}')
    changed = hash_tree(tmp_path / "b", skip={".kserve-cache.json"})
    assert manifest_digest(changed) != manifest_digest(a)


def test_digest_needs_hashes() -> None:
    with pytest.raises(IntegrityError, match="no sha256"):
        manifest_digest([FileDigest("a", 1, "")])


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        pytest.param("sha256:" + "a" * 64, True, id="ok"),
        pytest.param(" SHA256:" + "A" * 64 + " ", True, id="case-and-space"),
        pytest.param("sha256:" + "a" * 63, False, id="short"),
        pytest.param("md5:" + "a" * 32, False, id="other-algo"),
        pytest.param("a" * 64, False, id="no-prefix"),
    ],
)
def test_parse_digest(text: str, ok: bool) -> None:
    if ok:
        assert parse_digest(text) == "sha256:" + "a" * 64
    else:
        with pytest.raises(IntegrityError):
            parse_digest(text)


def test_flipped_byte_size_check_misses_it_full_check_finds_it(tmp_path: Path) -> None:
    root = _model(tmp_path / "m")
    files = hash_tree(root, skip={".kserve-cache.json"})
    assert verify_sizes(root, files) == []
    assert verify_full(root, files) == []
    w = root / "sub" / "w.bin"
    data = bytearray(w.read_bytes())
    data[1000] ^= 0x01
    w.write_bytes(bytes(data))
    assert verify_sizes(root, files) == []  # same size: O(files) cannot see it
    problems = verify_full(root, files)
    assert [(p.path, p.kind) for p in problems] == [("sub/w.bin", "hash")]


def test_truncated_and_missing_files(tmp_path: Path) -> None:
    root = _model(tmp_path / "m")
    files = hash_tree(root, skip={".kserve-cache.json"})
    (root / "config.json").unlink()
    with (root / "sub" / "w.bin").open("r+b") as fh:
        fh.truncate(10)
    kinds = {(p.path, p.kind) for p in verify_sizes(root, files)}
    assert kinds == {("config.json", "missing"), ("sub/w.bin", "size")}
    assert {(p.path, p.kind) for p in verify_full(root, files)} == kinds


def test_paths_leaving_the_folder_are_refused(tmp_path: Path) -> None:
    root = _model(tmp_path / "m")
    (tmp_path / "outside").write_bytes(b"x")
    problems = verify_sizes(root, [FileDigest("../outside", 1, "0" * 64)])
    assert [p.kind for p in problems] == ["missing"]


def test_unhashed_legacy_rows_are_reported_by_full_check(tmp_path: Path) -> None:
    root = _model(tmp_path / "m")
    rows = [FileDigest("config.json", 8, "")]
    assert verify_sizes(root, rows) == []
    assert [p.kind for p in verify_full(root, rows)] == ["unhashed"]
