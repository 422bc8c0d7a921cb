"""Refs and versions under the kubelet's subPath rule; atomic swaps; migration of plain folders."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from webhook.cache.layout import Layout
from webhook.cache.refs import (
    Node,
    RefError,
    SubPathError,
    eval_symlinks,
    fs_lookup,
    install_version,
    list_versions,
    read_ref,
    read_served,
    record_served,
    ref_target,
    resolve_subpath,
    swap_ref,
    version_dir,
)

KEY = "llama-0123456789abcdef"
V1 = "1111111111111111"
V2 = "2222222222222222"


def fake(tree: dict[str, str]) -> object:
    """A Lookup over `{path: "dir" | "file" | "->target"}`; parents of listed paths are dirs."""
    nodes: dict[PurePosixPath, Node] = {PurePosixPath("/"): Node("dir")}
    for raw, what in tree.items():
        path = PurePosixPath(raw)
        for parent in path.parents:
            nodes.setdefault(parent, Node("dir"))
        nodes[path] = Node("link", what[2:]) if what.startswith("->") else Node(what)

    def lookup(path: PurePosixPath) -> Node:
        return nodes.get(path, Node("missing"))

    return lookup


@pytest.mark.parametrize(
    ("tree", "sub", "result"),
    [
        pytest.param({"/v/models/k": "dir"}, "models/k", "/v/models/k", id="plain-folder"),
        pytest.param(
            {"/v/models/k": "->../versions/k/1", "/v/versions/k/1": "dir"},
            "models/k",
            "/v/versions/k/1",
            id="relative-ref",
        ),
        pytest.param(
            {"/v/models/k": "->/v/versions/k/1", "/v/versions/k/1": "dir"},
            "models/k",
            "/v/versions/k/1",
            id="absolute-inside",
        ),
        pytest.param(
            {"/real/models/k": "->../versions/k/1", "/real/versions/k/1": "dir", "/v": "->/real"},
            "models/k",
            "/real/versions/k/1",
            id="volume-path-is-a-link",
        ),
        pytest.param(
            {"/v/models/k": "->../../etc", "/etc": "dir"}, "models/k", None, id="escapes-volume"
        ),
        pytest.param(
            {"/v/models/k": "->/etc", "/etc": "dir"}, "models/k", None, id="absolute-outside"
        ),
        pytest.param({"/v/models/k": "->../versions/k/9"}, "models/k", None, id="dangling"),
        pytest.param({"/v/models": "dir"}, "models/k", None, id="missing-would-be-created"),
        pytest.param({"/v/models/k": "->k"}, "models/k", None, id="loop"),
        pytest.param({"/v/models/k": "dir"}, "../v/models/k", None, id="backstep"),
        pytest.param({"/v/models/k": "dir"}, "/v/models/k", None, id="absolute-subpath"),
        pytest.param({"/v/models/k": "file"}, "models/k", None, id="a-file"),
    ],
)
def test_resolve_subpath_like_the_kubelet(
    tree: dict[str, str], sub: str, result: str | None
) -> None:
    lookup = fake(tree)
    if result is None:
        with pytest.raises(SubPathError):
            resolve_subpath(PurePosixPath("/v"), sub, lookup=lookup)  # type: ignore[arg-type]
    else:
        got = resolve_subpath(PurePosixPath("/v"), sub, lookup=lookup)  # type: ignore[arg-type]
        assert got == PurePosixPath(result)


def test_eval_symlinks_agrees_with_realpath(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "l1").symlink_to("a")
    (tmp_path / "a" / "l2").symlink_to("../l1/b")
    path = PurePosixPath(tmp_path / "a" / "l2")
    assert eval_symlinks(path, lookup=fs_lookup) == PurePosixPath(os.path.realpath(path))


def _version(layout: Layout, vid: str, body: bytes) -> Path:
    staging = layout.root / ".staging" / f"{KEY}.{vid}"
    staging.mkdir(parents=True)
    (staging / "w.bin").write_bytes(body)
    path, fresh = install_version(layout, KEY, staging, vid)
    assert fresh
    return path


def _kubelet(layout: Layout) -> PurePosixPath:
    return resolve_subpath(PurePosixPath(layout.root), f"models/{KEY}", lookup=fs_lookup)


def test_swap_is_atomic_and_a_started_pod_keeps_its_version(layout: Layout) -> None:
    layout.ensure_dirs()
    _version(layout, V1, b"one")
    previous = swap_ref(layout, KEY, V1)
    assert previous.kind == "absent"
    assert str(layout.entry(KEY).readlink()) == ref_target(KEY, V1) == f"../versions/{KEY}/{V1}"
    started_on = Path(_kubelet(layout))  # the bind mount of a pod that started now
    assert (layout.entry(KEY) / "w.bin").read_bytes() == b"one"

    _version(layout, V2, b"two")
    previous = swap_ref(layout, KEY, V2)
    assert (previous.kind, previous.version) == ("link", V1)
    assert Path(_kubelet(layout)) == version_dir(layout, KEY, V2)
    assert (layout.entry(KEY) / "w.bin").read_bytes() == b"two"
    assert (started_on / "w.bin").read_bytes() == b"one"  # the old pod still reads v1
    assert list_versions(layout, KEY) == [V1, V2]
    # No temporary link is left behind.
    assert sorted(p.name for p in layout.models.iterdir()) == [KEY]


def test_swap_refuses_a_missing_version_and_bad_names(layout: Layout) -> None:
    layout.ensure_dirs()
    with pytest.raises(RefError, match="does not exist"):
        swap_ref(layout, KEY, V1)
    with pytest.raises(RefError, match="not a version"):
        swap_ref(layout, KEY, "../../etc")
    with pytest.raises(RefError, match="not a cache key"):
        swap_ref(layout, "../x", V1)
    assert not layout.entry(KEY).exists()
    assert list(layout.models.iterdir()) == []


def test_a_ref_that_would_leave_the_volume_is_never_written(layout: Layout, tmp_path: Path) -> None:
    """versions/<key> replaced by a link to outside the volume: the new ref would resolve
    outside, so the kubelet check refuses it and the old ref stays."""
    layout.ensure_dirs()
    _version(layout, V1, b"one")
    swap_ref(layout, KEY, V1)
    outside = tmp_path / "outside" / KEY / V2
    outside.mkdir(parents=True)
    versions = layout.root / "versions" / KEY
    (versions / V2).symlink_to(outside)
    with pytest.raises(RefError, match="not within volume"):
        swap_ref(layout, KEY, V2)
    assert str(layout.entry(KEY).readlink()) == ref_target(KEY, V1)
    assert sorted(p.name for p in layout.models.iterdir()) == [KEY]


def test_migration_of_a_plain_folder(layout: Layout) -> None:
    layout.ensure_dirs()
    plain = layout.entry(KEY)
    plain.mkdir()
    (plain / "w.bin").write_bytes(b"old")
    ref = read_ref(layout, KEY)
    assert (ref.kind, ref.path) == ("folder", plain)  # valid as it is: one version
    started_on = Path(_kubelet(layout))
    fd = os.open(started_on / "w.bin", os.O_RDONLY)  # a pod reading the old folder
    _version(layout, V2, b"new")
    previous = swap_ref(layout, KEY, V2)
    assert previous.kind == "folder"
    assert (layout.entry(KEY) / "w.bin").read_bytes() == b"new"
    legacy = [v for v in list_versions(layout, KEY) if v.startswith("legacy-")]
    assert len(legacy) == 1
    assert (version_dir(layout, KEY, legacy[0]) / "w.bin").read_bytes() == b"old"
    assert os.read(fd, 10) == b"old"
    os.close(fd)
    assert Path(_kubelet(layout)) == version_dir(layout, KEY, V2)


def test_same_content_installs_once(layout: Layout) -> None:
    layout.ensure_dirs()
    _version(layout, V1, b"one")
    again = layout.root / ".staging" / f"{KEY}.again"
    again.mkdir(parents=True)
    (again / "w.bin").write_bytes(b"one")
    path, fresh = install_version(layout, KEY, again, V1)
    assert not fresh
    assert path == version_dir(layout, KEY, V1)
    assert not again.exists()


def test_served_record(layout: Layout) -> None:
    record_served(layout, KEY, V1, pod="pod-a", now=10.0)
    record_served(layout, KEY, V2, pod="pod-b", now=20.0)
    record_served(layout, KEY, V2, pod="pod-a", now=30.0)
    assert read_served(layout, KEY) == {"pod-a": (V2, 30.0), "pod-b": (V2, 20.0)}


def test_migration_without_rename_exchange(layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where renameat2(RENAME_EXCHANGE) is refused (NFS), two renames; a folder a kubelet made
    in between is moved aside."""
    import webhook.cache.refs as refs

    layout.ensure_dirs()
    plain = layout.entry(KEY)
    plain.mkdir()
    (plain / "w.bin").write_bytes(b"old")
    _version(layout, V2, b"new")
    real_rename = Path.rename
    raced: list[Path] = []

    def racing_rename(self: Path, target: Path) -> Path:
        moved = real_rename(self, target)
        if self == plain and not raced:
            plain.mkdir()  # the kubelet creating a missing subPath right in the window
            raced.append(plain)
        return moved

    monkeypatch.setattr(refs, "exchange", lambda *_: False)
    monkeypatch.setattr(Path, "rename", racing_rename)
    swap_ref(layout, KEY, V2)
    monkeypatch.undo()
    assert raced
    assert (layout.entry(KEY) / "w.bin").read_bytes() == b"new"
    assert Path(_kubelet(layout)) == version_dir(layout, KEY, V2)
    legacy = [v for v in list_versions(layout, KEY) if v.startswith("legacy-")]
    assert (version_dir(layout, KEY, legacy[0]) / "w.bin").read_bytes() == b"old"


def test_exchange_swaps_two_names(tmp_path: Path) -> None:
    from webhook.cache.refs import exchange

    (tmp_path / "a").mkdir()
    (tmp_path / "b").symlink_to("a")
    if not exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("renameat2(RENAME_EXCHANGE) not supported here")
    assert (tmp_path / "a").is_symlink()
    assert (tmp_path / "b").is_dir()
    assert not (tmp_path / "b").is_symlink()
