"""The fetch protocol in-process, with real files and threads and injected downloaders."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from pathlib import Path

import pytest

from webhook.cache import lease as leases
from webhook.cache.fetch import ErrorKind, FetchError, clean_stale, fetch_entry, publish, seal
from webhook.cache.layout import MANIFEST_NAME, Layout, read_lease, read_manifest, read_usage
from webhook.keys import cache_key

URI = "s3://bucket/models/resnet"
KEY = cache_key(URI)
FILES = {"config.json": b"{}\n", "weights/model.bin": os.urandom(50_000)}


class Writer:
    """A downloader writing FILES, counting its calls; optionally blocks until released."""

    def __init__(self, *, gate: threading.Event | None = None) -> None:
        self.calls = 0
        self.gate = gate
        self.started = threading.Event()

    def __call__(self, _uri: str, out: Path) -> None:
        self.calls += 1
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        for name, body in FILES.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(body)


def entry_files(layout: Layout, key: str = KEY) -> dict[str, bytes]:
    root = layout.entry(key)
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name != MANIFEST_NAME
    }


def test_miss_publishes_then_hit_without_downloading(layout: Layout) -> None:
    writer = Writer()
    first = fetch_entry(layout, uri=URI, key=KEY, downloader=writer)
    second = fetch_entry(layout, uri=URI, key=KEY, downloader=writer)

    assert (first.outcome, second.outcome, writer.calls) == ("miss", "hit", 1)
    assert first.bytes == second.bytes == sum(len(b) for b in FILES.values())
    assert entry_files(layout) == FILES
    manifest = read_manifest(layout, KEY)
    assert manifest is not None
    assert {f.path: f.size for f in manifest.files} == {k: len(v) for k, v in FILES.items()}
    usage = read_usage(layout, KEY)
    assert usage is not None
    assert (usage.misses, usage.hits) == (1, 1)
    assert read_lease(layout, KEY) is None
    assert list(layout.staging.iterdir()) == []


def test_hit_never_opens_model_files(layout: Layout) -> None:
    fetch_entry(layout, uri=URI, key=KEY, downloader=Writer())
    # A FIFO blocks whoever opens it: a hit that read, hashed or copied it would hang here.
    weights = layout.entry(KEY) / "weights" / "model.bin"
    weights.unlink()
    os.mkfifo(weights)
    result = fetch_entry(layout, uri=URI, key=KEY, downloader=Writer())
    assert result.outcome == "hit"


@pytest.mark.parametrize(
    ("key", "revision"),
    [
        pytest.param(cache_key(URI, "v2"), "", id="key-of-another-revision"),
        pytest.param("../../etc", "", id="path-traversal"),
        pytest.param(KEY, "bad revision!", id="invalid-revision"),
    ],
)
def test_bad_key_is_refused_and_nothing_is_written(layout: Layout, key: str, revision: str) -> None:
    with pytest.raises(FetchError) as err:
        fetch_entry(layout, uri=URI, key=key, revision=revision, downloader=Writer())
    assert err.value.kind is ErrorKind.BAD_ARGUMENTS
    assert list(layout.root.iterdir()) == []


def test_revision_is_part_of_the_key(layout: Layout) -> None:
    key = cache_key(URI, "v2")
    result = fetch_entry(layout, uri=URI, key=key, revision="v2", downloader=Writer())
    manifest = read_manifest(layout, key)
    assert result.outcome == "miss"
    assert manifest is not None
    assert manifest.revision == "v2"


def test_waiter_hits_once_the_holder_publishes(layout: Layout) -> None:
    gate = threading.Event()
    holder_writer, waiter_writer = Writer(gate=gate), Writer()
    results: dict[str, str] = {}

    def run(name: str, writer: Writer) -> None:
        results[name] = fetch_entry(layout, uri=URI, key=KEY, downloader=writer).outcome

    holder = threading.Thread(target=run, args=("holder", holder_writer))
    holder.start()
    assert holder_writer.started.wait(10)
    waiter = threading.Thread(target=run, args=("waiter", waiter_writer))
    waiter.start()
    time.sleep(0.3)  # the waiter finds the lease held and polls (the outcome proves it)
    gate.set()
    holder.join(10)
    waiter.join(10)
    assert results == {"holder": "miss", "waiter": "waited"}
    assert waiter_writer.calls == 0


def test_wait_timeout_leaves_nothing(layout: Layout) -> None:
    layout.ensure_dirs()
    held = leases.try_acquire(layout, KEY, holder="other-pod")
    assert held is not None
    with leases.Heartbeat(held, interval=0.05), pytest.raises(FetchError) as err:
        fetch_entry(layout, uri=URI, key=KEY, downloader=Writer(), wait_timeout=0.3)
    assert err.value.kind is ErrorKind.WAIT_TIMEOUT
    assert "other-pod" in err.value.message
    assert not layout.entry(KEY).exists()
    assert list(layout.staging.iterdir()) == []


def test_stale_lease_is_taken_over(layout: Layout) -> None:
    layout.ensure_dirs()
    assert leases.try_acquire(layout, KEY, holder="dead-pod") is not None
    old = time.time() - 60
    os.utime(layout.lock(KEY), (old, old))
    stale_staging = layout.new_staging(KEY)
    stale_staging.mkdir()
    (stale_staging / "half.bin").write_bytes(b"x" * 10)
    os.utime(stale_staging, (old, old))

    result = fetch_entry(layout, uri=URI, key=KEY, downloader=Writer(), lease_ttl=5)
    assert result.outcome == "miss"
    assert entry_files(layout) == FILES
    assert read_lease(layout, KEY) is None
    assert list(layout.staging.iterdir()) == []


def test_only_one_of_many_breakers_takes_over(layout: Layout) -> None:
    layout.ensure_dirs()
    for _ in range(30):
        assert leases.try_acquire(layout, KEY, holder="dead-pod") is not None
        old = time.time() - 60
        os.utime(layout.lock(KEY), (old, old))
        barrier = threading.Barrier(8)
        broke: list[bool] = []

        def breaker(barrier: threading.Barrier, broke: list[bool]) -> None:
            barrier.wait()
            broke.append(leases.break_if_stale(layout, KEY, ttl=5))

        threads = [threading.Thread(target=breaker, args=(barrier, broke)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert broke.count(True) == 1
        assert read_lease(layout, KEY) is None
    assert sorted(p.name for p in layout.locks.iterdir()) == []


def test_live_lease_is_not_broken(layout: Layout) -> None:
    layout.ensure_dirs()
    assert leases.try_acquire(layout, KEY, holder="alive") is not None
    assert leases.break_if_stale(layout, KEY, ttl=5) is False
    info = read_lease(layout, KEY)
    assert info is not None
    assert info.holder == "alive"


def test_release_leaves_a_rivals_lease_alone(layout: Layout) -> None:
    layout.ensure_dirs()
    mine = leases.try_acquire(layout, KEY, holder="me")
    assert mine is not None
    layout.lock(KEY).unlink()  # as if a waiter broke our lease and took a new one
    assert leases.try_acquire(layout, KEY, holder="rival") is not None

    assert mine.is_mine() is False
    assert mine.touch() is False
    assert leases.release(mine) is False
    info = read_lease(layout, KEY)
    assert info is not None
    assert info.holder == "rival"
    assert [p.name for p in layout.locks.iterdir()] == [KEY]


def test_heartbeat_keeps_the_lease_live(layout: Layout) -> None:
    layout.ensure_dirs()
    mine = leases.try_acquire(layout, KEY, holder="me")
    assert mine is not None
    old = time.time() - 60
    os.utime(mine.path, (old, old))
    with leases.Heartbeat(mine, interval=0.05):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            info = read_lease(layout, KEY)
            if info is not None and info.is_live(ttl=5):
                break
            time.sleep(0.05)
    info = read_lease(layout, KEY)
    assert info is not None
    assert info.is_live(ttl=5)


def test_rival_published_first_means_hit_and_staging_discarded(layout: Layout) -> None:
    def racing(uri: str, out: Path) -> None:
        Writer()(uri, out)
        # While we download, another node publishes the same entry (it held an older lease).
        rival = layout.new_staging(KEY)
        rival.mkdir()
        Writer()(uri, rival)
        (rival / "rival-marker").write_bytes(b"r")
        (rival / MANIFEST_NAME).write_text(
            json.dumps(
                {
                    "uri": uri,
                    "revision": "",
                    "key": KEY,
                    "files": [],
                    "bytes": 0,
                    "created_at": 0,
                    "download_seconds": 0,
                }
            )
        )
        rival.rename(layout.entry(KEY))

    result = fetch_entry(layout, uri=URI, key=KEY, downloader=racing)
    assert result.outcome == "hit"
    assert (layout.entry(KEY) / "rival-marker").exists()
    assert list(layout.staging.iterdir()) == []
    assert read_lease(layout, KEY) is None


def test_empty_subpath_folder_is_replaced_and_broken_entry_moved_aside(layout: Layout) -> None:
    layout.ensure_dirs()
    layout.entry(KEY).mkdir()  # what Kubernetes creates for a missing subPath
    assert fetch_entry(layout, uri=URI, key=KEY, downloader=Writer()).outcome == "miss"

    other = cache_key(URI, "v9")
    layout.entry(other).mkdir()
    (layout.entry(other) / "junk").write_bytes(b"junk")
    staging = layout.new_staging(other)
    staging.mkdir()
    Writer()(URI, staging)
    assert publish(layout, other, staging) is True
    assert not (layout.entry(other) / "junk").exists()
    assert len(list(layout.staging.iterdir())) == 1  # the broken one, for stale cleaning


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        pytest.param(errno.ENOSPC, ErrorKind.DISK_FULL, id="enospc"),
        pytest.param(errno.EDQUOT, ErrorKind.DISK_FULL, id="edquot"),
        pytest.param(errno.EROFS, ErrorKind.CACHE_NOT_WRITABLE, id="erofs"),
        pytest.param(errno.EIO, ErrorKind.DOWNLOAD_FAILED, id="eio"),
    ],
)
def test_writer_error_cleans_up_and_classifies(layout: Layout, code: int, kind: ErrorKind) -> None:
    def failing(uri: str, out: Path) -> None:
        (out / "part.bin").write_bytes(b"x" * 1000)
        raise OSError(code, os.strerror(code), str(out / "part.bin"))

    with pytest.raises(FetchError) as err:
        fetch_entry(layout, uri=URI, key=KEY, downloader=failing)
    assert err.value.kind is kind
    assert not layout.entry(KEY).exists()
    assert list(layout.staging.iterdir()) == []
    assert read_lease(layout, KEY) is None


def test_empty_download_is_not_published(layout: Layout) -> None:
    with pytest.raises(FetchError) as err:
        fetch_entry(layout, uri=URI, key=KEY, downloader=lambda _uri, _out: None)
    assert err.value.kind is ErrorKind.NOT_FOUND
    assert not layout.entry(KEY).exists()


def test_clean_stale_keeps_live_and_young_staging(layout: Layout) -> None:
    layout.ensure_dirs()
    now = time.time()
    live_key, dead_key, young_key = (cache_key(URI, r) for r in ("a", "b", "c"))
    assert leases.try_acquire(layout, live_key, holder="live") is not None
    assert leases.try_acquire(layout, dead_key, holder="dead") is not None
    os.utime(layout.lock(dead_key), (now - 60, now - 60))
    folders = {k: layout.new_staging(k) for k in (live_key, dead_key, young_key)}
    for key, folder in folders.items():
        folder.mkdir()
        if key != young_key:
            os.utime(folder, (now - 60, now - 60))
    (layout.staging / "not-a-staging-folder").mkdir()

    assert clean_stale(layout, ttl=10) == 1
    assert sorted(p.name for p in layout.staging.iterdir()) == sorted(
        [folders[live_key].name, folders[young_key].name, "not-a-staging-folder"]
    )
    assert read_lease(layout, dead_key) is None
    assert read_lease(layout, live_key) is not None


def test_seal_materializes_links_and_lists_files(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "a.bin").write_bytes(b"a" * 10)
    (source / "sub" / "b.bin").write_bytes(b"b" * 20)
    folder = tmp_path / "staging"
    folder.mkdir()
    (folder / "a.bin").symlink_to(source / "a.bin")
    (folder / "sub").symlink_to(source / "sub")

    files = seal(folder)
    assert {f.path: f.size for f in files} == {"a.bin": 10, "sub/b.bin": 20}
    assert not any(p.is_symlink() for p in folder.rglob("*"))
    (source / "a.bin").write_bytes(b"changed")
    assert (folder / "a.bin").read_bytes() == b"a" * 10
