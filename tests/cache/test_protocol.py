"""The fetch protocol in-process, with real files and threads and injected downloaders."""

from __future__ import annotations

import errno
import io
import json
import os
import threading
import time
from pathlib import Path

import pytest

from webhook.cache import lease as leases
from webhook.cache.fetch import ErrorKind, FetchError, clean_stale, fetch_entry, publish, seal
from webhook.cache.layout import MANIFEST_NAME, Layout, Manifest, read_manifest, read_usage
from webhook.cache.lease import read_holder
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
    assert read_holder(layout, KEY) is None
    assert list(layout.staging.iterdir()) == []


def test_hit_checks_sizes_without_opening_model_files(
    layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetch_entry(layout, uri=URI, key=KEY, downloader=Writer())
    opened: list[str] = []
    real_open, real_io_open = os.open, io.open

    def spy_os_open(path: object, *args: object, **kwargs: object) -> int:
        opened.append(str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    def spy_io_open(path: object, *args: object, **kwargs: object) -> object:
        opened.append(str(path))
        return real_io_open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "open", spy_os_open)
    monkeypatch.setattr(io, "open", spy_io_open)
    result = fetch_entry(layout, uri=URI, key=KEY, downloader=Writer())
    monkeypatch.undo()
    assert result.outcome == "hit"
    entry = str(layout.entry(KEY))
    assert [p for p in opened if p.startswith(entry)] == [str(layout.manifest(KEY))]


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


def test_silent_lease_is_taken_over_after_ttl_and_margin(layout: Layout) -> None:
    layout.ensure_dirs()
    dead = leases.try_acquire(layout, KEY, holder="dead-pod")
    assert dead is not None
    stale_staging = layout.new_staging(KEY)
    stale_staging.mkdir()
    (stale_staging / "half.bin").write_bytes(b"x" * 10)

    result = fetch_entry(layout, uri=URI, key=KEY, downloader=Writer(), lease_ttl=0.4)
    assert result.outcome == "miss"
    assert entry_files(layout) == FILES
    assert read_holder(layout, KEY) is None
    # Taken over by creating the next generation: the dead one was never deleted.
    assert leases.generations(layout, KEY) == [1, 2]
    assert dead.is_mine() is False
    assert list(layout.staging.iterdir()) == []
    assert list(layout.trash.iterdir()) == []  # its staging was renamed aside, then deleted


def test_only_one_of_many_takers_gets_the_next_generation(layout: Layout) -> None:
    layout.ensure_dirs()
    for round_ in range(30):
        view = leases.read_current(layout, KEY)
        barrier = threading.Barrier(8)
        won: list[leases.Lease] = []

        def taker(barrier: threading.Barrier, won: list[leases.Lease], view: object) -> None:
            barrier.wait()
            got = leases.try_acquire(layout, KEY, holder=leases.new_holder_id(), after=view)  # type: ignore[arg-type]
            if got is not None:
                won.append(got)

        threads = [threading.Thread(target=taker, args=(barrier, won, view)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1
        assert won[0].gen == round_ + 1
        holder = read_holder(layout, KEY)
        assert holder is not None
        assert holder.holder == won[0].holder
    assert leases.generations(layout, KEY) == list(range(1, 31))


def test_a_beating_lease_is_never_judged_dead(layout: Layout) -> None:
    layout.ensure_dirs()
    alive = leases.try_acquire(layout, KEY, holder="alive")
    assert alive is not None
    watch = leases.Watch(ttl=0.2)
    verdicts = set()
    with leases.Heartbeat(alive, interval=0.05):
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            verdicts.add(watch.look(leases.read_current(layout, KEY)))
            time.sleep(0.02)
    assert verdicts == {"held"}
    assert leases.try_acquire(layout, KEY, holder="waiter") is None
    # Once it stops beating, the same watch declares it dead.
    deadline = time.monotonic() + 5
    while watch.look(leases.read_current(layout, KEY)) != "dead":
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_watch_judges_on_its_own_clock() -> None:
    now = [100.0]
    watch = leases.Watch(ttl=10, clock=lambda: now[0])

    def view(gen: int, sig: bytes | None) -> leases.LeaseView:
        state = leases.HELD if sig is not None else leases.UNREADABLE
        return leases.LeaseView(KEY, gen, "h", state, 0, 0.0, sig)

    assert watch.look(None) == "free"
    assert watch.look(view(1, b"a")) == "held"
    now[0] += 12.4
    assert watch.look(view(1, b"a")) == "held"  # 12.4 <= 10 * 1.25
    assert watch.look(view(1, b"b")) == "held"  # a beat resets the clock
    now[0] += 12
    assert watch.look(view(1, None)) == "held"  # unreadable: no change, not a beat
    now[0] += 1
    assert watch.look(view(1, None)) == "dead"
    assert watch.look(view(2, None)) == "held"  # a new generation starts a new watch
    released = leases.LeaseView(KEY, 2, "h", leases.RELEASED, 1, 0.0, b"r")
    assert watch.look(released) == "free"


def test_a_superseded_lease_cannot_beat_or_release(layout: Layout) -> None:
    layout.ensure_dirs()
    mine = leases.try_acquire(layout, KEY, holder="me")
    assert mine is not None
    rival = leases.try_acquire(layout, KEY, holder="rival", after=leases.read_current(layout, KEY))
    assert rival is not None
    assert (mine.gen, rival.gen) == (1, 2)
    assert mine.superseded() is True
    assert mine.is_mine() is False
    assert mine.touch() is False
    assert leases.release(mine) is False
    holder = read_holder(layout, KEY)
    assert holder is not None
    assert holder.holder == "rival"
    assert rival.release() is True
    assert read_holder(layout, KEY) is None
    # Released, never deleted: the next taker takes generation 3 at once.
    nxt = leases.try_acquire(layout, KEY, holder="next")
    assert nxt is not None
    assert nxt.gen == 3


def test_a_holder_that_is_taken_over_stops_and_waits(layout: Layout) -> None:
    """The holder of gen n stops when gen n+1 appears (it was judged dead while slow): it does
    not publish its copy, and it ends as a waiter on the new holder's entry."""
    gate = threading.Event()
    slow = Writer(gate=gate)
    results: dict[str, str] = {}

    def run() -> None:
        results["old"] = fetch_entry(
            layout, uri=URI, key=KEY, downloader=slow, lease_ttl=0.4
        ).outcome

    old = threading.Thread(target=run)
    old.start()
    assert slow.started.wait(10)
    view = leases.read_current(layout, KEY)
    assert view is not None
    new = leases.try_acquire(layout, KEY, holder="new-holder", after=view)
    assert new is not None
    with leases.Heartbeat(new, interval=0.05):
        staging = layout.new_staging(KEY)
        staging.mkdir()
        Writer()(URI, staging)
        (staging / "from-new-holder").write_bytes(b"n")
        # The old holder sees generation 2 at its next beat, stops and renames its staging
        # aside (its downloader thread, blocked, is abandoned: it never writes again).
        deadline = time.monotonic() + 10
        while [p for p in layout.staging.iterdir() if p != staging]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        files = seal(staging)
        manifest = Manifest(
            uri=URI, revision="", key=KEY, files=files, bytes=sum(f.size for f in files),
            created_at=time.time(), download_seconds=0.0, endpoint="",
        )  # fmt: skip
        (staging / MANIFEST_NAME).write_text(manifest.to_json())
        assert publish(layout, KEY, staging) is True
        old.join(10)
    new.release()
    assert results == {"old": "waited"}
    assert (layout.entry(KEY) / "from-new-holder").exists()
    assert list(layout.staging.iterdir()) == []


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
    assert read_holder(layout, KEY) is None


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
    # The broken folder was renamed into .trash, then deleted; nothing is left anywhere.
    assert list(layout.staging.iterdir()) == []
    assert list(layout.trash.iterdir()) == []


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
    assert read_holder(layout, KEY) is None


def test_empty_download_is_not_published(layout: Layout) -> None:
    with pytest.raises(FetchError) as err:
        fetch_entry(layout, uri=URI, key=KEY, downloader=lambda _uri, _out: None)
    assert err.value.kind is ErrorKind.NOT_FOUND
    assert not layout.entry(KEY).exists()


def test_clean_stale_keeps_held_and_young_staging(layout: Layout) -> None:
    layout.ensure_dirs()
    now = time.time()
    live_key, dead_key, young_key = (cache_key(URI, r) for r in ("a", "b", "c"))
    assert leases.try_acquire(layout, live_key, holder="live") is not None
    released = leases.try_acquire(layout, dead_key, holder="done")
    assert released is not None
    assert released.release()
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
    assert read_holder(layout, dead_key) is None
    assert read_holder(layout, live_key) is not None
    assert list(layout.trash.iterdir()) == []


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


def test_a_waiter_never_reports_success_on_a_half_copied_entry(layout: Layout) -> None:
    """On an object-storage FUSE mount a folder "rename" is a copy, manifest first: a waiter
    that saw the manifest and 1 of 2 files must keep waiting, never exit 0."""
    layout.ensure_dirs()
    holder = leases.try_acquire(layout, KEY, holder="copying-holder")
    assert holder is not None
    staging = layout.new_staging(KEY)
    staging.mkdir()
    Writer()(URI, staging)
    files = seal(staging)
    manifest = Manifest(uri=URI, revision="", key=KEY, files=files,
                        bytes=sum(f.size for f in files), created_at=time.time(),
                        download_seconds=0.0, endpoint="")  # fmt: skip
    layout.entry(KEY).mkdir()
    (layout.entry(KEY) / MANIFEST_NAME).write_text(manifest.to_json())
    (layout.entry(KEY) / "config.json").write_bytes(FILES["config.json"])  # 1 of 2 copied
    with leases.Heartbeat(holder, interval=0.05), pytest.raises(FetchError) as err:
        fetch_entry(layout, uri=URI, key=KEY, downloader=Writer(), wait_timeout=0.5)
    assert err.value.kind is ErrorKind.WAIT_TIMEOUT
    # The copying holder died: the next fetch renames the half entry aside and downloads.
    assert holder.release()
    writer = Writer()
    result = fetch_entry(layout, uri=URI, key=KEY, downloader=writer)
    assert (result.outcome, writer.calls) == ("miss", 1)
    assert entry_files(layout) == FILES
    assert list(layout.trash.iterdir()) == []
