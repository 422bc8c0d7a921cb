"""`hf://` through the versions layer in-process: the hub stub says which commit `main` is,
the download is asked for exactly that commit, and a moved branch gives a new version."""

from __future__ import annotations

import os
from pathlib import Path

from webhook.cache.layout import Layout
from webhook.cache.versioned import Options, fetch_versioned
from webhook.cache.versions import parse_refresh
from webhook.keys import cache_key

from .stubs import StubServer


class Recorder:
    """A downloader writing a file named after the commit it was asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, uri: str, out_dir: Path) -> None:
        self.asked.append(uri)
        (out_dir / "config.json").write_text(uri.rsplit(":", 1)[-1])


def test_hf_version_follows_the_branch_commit(stub: StubServer, layout: Layout) -> None:
    repo = f"org/m-{os.urandom(3).hex()}"
    uri = f"hf://{repo}"
    env = {"HF_ENDPOINT": stub.url()}
    stub.hub[(repo, "main")] = "a" * 40
    download = Recorder()
    options = Options(refresh=parse_refresh("on-start"), env=env, symlinks=True, pod="p")
    first = fetch_versioned(
        layout, uri=uri, key=cache_key(uri), downloader=download, options=options, source=""
    )
    assert download.asked == [f"hf://{repo}:{'a' * 40}"]
    assert first.fingerprint is not None
    assert first.fingerprint["commit"] == "a" * 40
    assert (first.path / "config.json").read_text() == "a" * 40

    same = fetch_versioned(
        layout, uri=uri, key=cache_key(uri), downloader=download, options=options, source=""
    )
    assert (same.result.outcome, same.check) == ("hit", "unchanged")
    assert len(download.asked) == 1

    stub.hub[(repo, "main")] = "b" * 40  # a push to main
    moved = fetch_versioned(
        layout, uri=uri, key=cache_key(uri), downloader=download, options=options, source=""
    )
    assert (moved.result.outcome, moved.check) == ("miss", "changed")
    assert download.asked[-1] == f"hf://{repo}:{'b' * 40}"
    assert (moved.path / "config.json").read_text() == "b" * 40
    assert (first.path / "config.json").read_text() == "a" * 40  # v1 untouched
    assert moved.digest != first.digest


def test_full_verify_of_an_entry_from_before_hashes_checks_sizes_and_says_so(
    layout: Layout,
) -> None:
    import json

    uri = "s3://models/old"
    key = cache_key(uri)
    entry = layout.entry(key)
    entry.mkdir(parents=True)
    (entry / "w.bin").write_bytes(b"abc")
    manifest = {
        "uri": uri, "revision": "", "key": key, "bytes": 3, "created_at": 1.0,
        "download_seconds": 0.0, "version": 1, "files": [{"path": "w.bin", "size": 3}],
    }  # fmt: skip
    (entry / ".kserve-cache.json").write_text(json.dumps(manifest))
    options = Options(verify="full", symlinks=True, pod="p")
    served = fetch_versioned(
        layout, uri=uri, key=key, downloader=Recorder(), options=options, source=""
    )
    assert served.result.outcome == "hit"
    assert any("predates per-file hashes" in w for w in served.warnings)
    (entry / "w.bin").write_bytes(b"abcd")  # a size change: incomplete, downloaded again
    download = Recorder()
    again = fetch_versioned(
        layout, uri=uri, key=key, downloader=download, options=options, source=""
    )
    assert again.result.outcome == "miss"
    assert download.asked == [uri]
    assert (again.path / "config.json").read_text() == uri.rsplit(":", 1)[-1]
    assert not (again.path / "w.bin").exists()
