"""`mutate(pod, policy, ...)`: the cached pod, as a pure function on raw dicts.

The input is never modified, unknown fields are preserved, and mutating an already mutated pod
changes nothing: every name we inject is fixed and every step replaces rather than appends.
The result shares the parts it does not change with the input (no deep copy of managedFields,
env...): treat both as read-only. It comes with the JSON patch from the input to it, recorded
where each change is made (see `mutate`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import orjson

from webhook import __version__, names
from webhook.clusterconfig import ClusterConfig, ServingMode
from webhook.keys import cache_key, source_endpoint
from webhook.patch import (
    MISSING,
    Op,
    add_op,
    escape,
    member_ops,
    remove_op,
    replace_op,
    same,
)
from webhook.policy import Policy
from webhook.selection import ModelSource, find_init_container, metadata
from webhook.skips import Skip, SkipReason
from webhook.template import FetchSpec, build_init_container, plain_env, unsupported

_NOT_PLAIN: Final = re.compile(rb"[^\x20-\x7e]|\\u")


def status_annotation(spec: FetchSpec, policy: Policy) -> str:
    """The `cache.kserve.io/status` value: what was injected, as compact JSON."""
    status: dict[str, Any] = {
        "key": spec.key,
        "pvc": spec.pvc,
        "uri": spec.uri,
        "mode": spec.mode.value,
        "version": __version__,
    }
    if spec.revision:
        status["revision"] = spec.revision
    if spec.endpoint:
        status["endpoint"] = spec.endpoint
    status["by"] = policy.status_sources()
    text = orjson.dumps(status, option=orjson.OPT_SORT_KEYS)
    if _NOT_PLAIN.search(text):
        # what orjson writes differently from `json.dumps` (which earlier releases used, and
        # whose text a re-invocation compares): non-ASCII, DEL and escaped control characters
        return json.dumps(status, sort_keys=True, separators=(",", ":"))
    return text.decode()


def fetch_spec(
    pod: Mapping[str, Any],
    policy: Policy,
    *,
    source: ModelSource,
    config: ClusterConfig,
    namespace: str,
) -> FetchSpec:
    labels, _ = metadata(pod)
    existing = find_init_container(pod, names.STORAGE_INITIALIZER)
    endpoint = source_endpoint(source.uri, plain_env(existing, config.initContainer))
    return FetchSpec(
        uri=source.uri,
        key=cache_key(source.uri, policy.revision, endpoint),
        endpoint=endpoint,
        revision=policy.revision,
        mode=policy.serving_mode,
        pvc=policy.pvc,
        secret=policy.secret,
        cache_mount_path=config.cacheMountPath,
        isvc=str(labels.get(names.ISVC_LABEL, "")),
        namespace=namespace,
        refresh=policy.refresh,
        digest=policy.digest,
        prefetch=policy.prefetch,
        read_only=policy.read_only,
        on_miss=policy.on_miss,
    )


def _writable_container(container: Any) -> Any:
    if not isinstance(container, dict):
        return container
    out = dict(container)
    mounts = out.get("volumeMounts")
    if isinstance(mounts, list):
        out["volumeMounts"] = list(mounts)
    return out


def _writable_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `pod` in which the objects `mutate` changes are copies: the pod, its metadata
    and spec, the container lists, each container and its volumeMounts. The rest is shared."""
    out = dict(pod)
    meta = out.get("metadata")
    if isinstance(meta, dict):
        out["metadata"] = dict(meta)
    spec = out.get("spec")
    if isinstance(spec, dict):
        spec = out["spec"] = dict(spec)
        for key in ("containers", "initContainers"):
            containers = spec.get(key)
            if isinstance(containers, list):
                spec[key] = [_writable_container(c) for c in containers]
    return out


def _model_mount(spec: FetchSpec) -> dict[str, Any]:
    if spec.mode is ServingMode.MOUNT:
        return {
            "name": names.CACHE_VOLUME,
            "mountPath": names.MODEL_MOUNT_PATH,
            "subPath": f"models/{spec.key}",
            "readOnly": True,
        }
    return {"name": names.PROVISION_VOLUME, "mountPath": names.MODEL_MOUNT_PATH, "readOnly": True}


def _is_model_path(path: object) -> bool:
    return isinstance(path, str) and path.rstrip("/") == names.MODEL_MOUNT_PATH


def _model_mounts(container: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [
        m
        for m in container.get("volumeMounts") or ()
        if isinstance(m, Mapping) and _is_model_path(m.get("mountPath"))
    ]


def copy_mode_reason(pod: Mapping[str, Any]) -> str | None:
    """Why this pod must get its own writable copy instead of the shared read-only mount.

    - `storage.kserve.io/readonly: "false"`, or any container mounting /mnt/models writable:
      it writes into its model folder, which a shared cache entry must never allow;
    - an init container (or native sidecar) that starts before the downloader and mounts
      /mnt/models: on a miss, mount mode would show it an empty cache entry, and the kubelet
      would create that entry's folder before the download publishes it. In copy mode it sees
      KServe's emptyDir exactly as without the cache. Init containers are never reordered:
      one that runs first may be what the download needs (a proxy, a CA bundle, iptables).
    """
    _, annotations = metadata(pod)
    if str(annotations.get(names.KSERVE_READONLY, "")).strip().lower() == "false":
        return f'{names.KSERVE_READONLY} is "false": the model server writes to /mnt/models'
    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        return None
    init = [c for c in spec.get("initContainers") or () if isinstance(c, Mapping)]
    ours = next(
        (i for i, c in enumerate(init) if c.get("name") == names.STORAGE_INITIALIZER), len(init)
    )
    for position, container in enumerate(init):
        if position == ours or not _model_mounts(container):
            continue
        if position < ours:
            return (
                f"init container {container.get('name')!r} mounts /mnt/models and starts "
                "before the downloader"
            )
    containers = [c for c in spec.get("containers") or () if isinstance(c, Mapping)]
    for container in [*init[ours + 1 :], *containers]:
        for mount in _model_mounts(container):
            if mount.get("readOnly") is not True:
                return f"container {container.get('name')!r} mounts /mnt/models writable"
    return None


def _retarget_model_mounts(
    spec: dict[str, Any], mount: dict[str, Any], *, mode: ServingMode, ops: list[Op]
) -> bool:
    """Point every /mnt/models mount of the containers and of the init containers other than
    ours at our volume; True when any container had one. In copy mode a mount of KServe's
    emptyDir stays as it is (its own readOnly included)."""
    found = False
    for key in ("containers", "initContainers"):
        for position, container in enumerate(spec.get(key) or ()):
            if key == "initContainers" and container.get("name") == names.STORAGE_INITIALIZER:
                continue
            mounts = container.get("volumeMounts")
            if not isinstance(mounts, list):
                continue
            for index, existing in enumerate(mounts):
                if not isinstance(existing, dict) or not _is_model_path(existing.get("mountPath")):
                    continue
                if existing.get("name") not in (names.PROVISION_VOLUME, names.CACHE_VOLUME):
                    raise Skip(
                        SkipReason.FOREIGN_MODEL_MOUNT,
                        f"container {container.get('name')!r} mounts volume "
                        f"{existing.get('name')!r} at {names.MODEL_MOUNT_PATH}",
                    )
                if (
                    existing.get("name") == names.CACHE_VOLUME
                    and existing.get("readOnly") is not True
                ):
                    # never ours (we mount the shared cache read-only): a writer into the cache
                    raise Skip(
                        SkipReason.FOREIGN_MODEL_MOUNT,
                        f"container {container.get('name')!r} mounts the cache volume "
                        f"{names.CACHE_VOLUME!r} writable at {names.MODEL_MOUNT_PATH}",
                    )
                found = True
                if mode is ServingMode.COPY and existing.get("name") == names.PROVISION_VOLUME:
                    continue
                if not same(existing, mount):
                    mounts[index] = dict(mount)
                    ops.append(
                        replace_op(f"/spec/{key}/{position}/volumeMounts/{index}", mounts[index])
                    )
    return found


def _references(spec: Mapping[str, Any], volume: str) -> bool:
    for key in ("containers", "initContainers", "ephemeralContainers"):
        for container in spec.get(key) or ():
            for mount in container.get("volumeMounts") or ():
                if mount.get("name") == volume:
                    return True
            for device in container.get("volumeDevices") or ():
                if device.get("name") == volume:
                    return True
    return False


def _mounter(spec: Mapping[str, Any], volume: str) -> str | None:
    """The name of a container other than our storage-initializer that mounts `volume`."""
    for key in ("containers", "initContainers", "ephemeralContainers"):
        for container in spec.get(key) or ():
            if not isinstance(container, Mapping):
                continue
            if key == "initContainers" and container.get("name") == names.STORAGE_INITIALIZER:
                continue
            for mount in container.get("volumeMounts") or ():
                if isinstance(mount, Mapping) and mount.get("name") == volume:
                    return str(container.get("name"))
    return None


class Mutation(NamedTuple):
    pod: dict[str, Any]
    """The pod with the cache injected (sharing what it does not change with the input)."""
    patch: list[Op]
    """The JSON patch (RFC 6902) from the input to `pod`, recorded as each change is made."""


def _set_member(ops: list[Op], path: str, parent: Mapping[str, Any], key: str, value: Any) -> None:
    """Record `parent[key] = value` (parent as in the input), when it changes anything."""
    old = parent.get(key, MISSING)
    if old is MISSING:
        ops.append(add_op(f"{path}/{escape(key)}", value))
    elif not same(old, value):
        ops.append(replace_op(f"{path}/{escape(key)}", value))


def _append(
    ops: list[Op], path: str, parent: Mapping[str, Any], key: str, items: list[Any]
) -> None:
    """Record that `items` were appended to the list `parent[key]` of the input: one `add` an
    item, or the whole list when the input had none (missing or null)."""
    old = parent.get(key, MISSING)
    if type(old) is not list:
        if items:
            _set_member(ops, path, parent, key, items)
        return
    for offset, item in enumerate(items):
        ops.append(add_op(f"{path}/{escape(key)}/{len(old) + offset}", item))


def mutate(
    pod: Mapping[str, Any],
    policy: Policy,
    *,
    source: ModelSource,
    config: ClusterConfig,
    namespace: str,
    spec: FetchSpec | None = None,
) -> Mutation:
    """The pod with the cache injected, and the patch to it. Raises Skip when it cannot be
    done safely. `spec` is `fetch_spec()` of the same arguments, when the caller has it.

    Every change below is recorded as a patch operation where it is made, against the input's
    own values (nothing is diffed afterwards): the input's shape decides between `add` of a
    member, `add` of a list item and `replace`, and a value equal to the input's is no op.
    """
    if spec is None:
        spec = fetch_spec(pod, policy, source=source, config=config, namespace=namespace)
    out = _writable_pod(pod)
    ops: list[Op] = []
    given_spec = pod.get("spec")
    if not isinstance(given_spec, dict):
        # never reached by a pod the selection lets through (it needs a model container);
        # kept total: the changes go into a new spec, added whole at the end
        given_spec = None
    pod_spec: dict[str, Any] = out.setdefault("spec", {})
    spec_ops: list[Op] = ops if given_spec is not None else []
    original: Mapping[str, Any] = given_spec if given_spec is not None else {}
    volumes: list[dict[str, Any]] = list(pod_spec.get("volumes") or [])
    for key in ("containers", "ephemeralContainers"):
        # container names are unique across all lists: our init container would be refused
        if any(
            isinstance(c, Mapping) and c.get("name") == names.STORAGE_INITIALIZER
            for c in pod_spec.get(key) or ()
        ):
            raise Skip(
                SkipReason.NAME_CONFLICT,
                f"a container in {key} is already named {names.STORAGE_INITIALIZER!r}",
            )

    # 1. the cache volume
    claim: dict[str, Any] = {"claimName": spec.pvc}
    if spec.read_only and not unsupported(spec):
        # what makes the kubelet publish the volume read-only (a mount's readOnly does not)
        claim["readOnly"] = True
    wanted_volume = {"name": names.CACHE_VOLUME, "persistentVolumeClaim": claim}
    added_volumes: list[dict[str, Any]] = []
    current = next((v for v in volumes if v.get("name") == names.CACHE_VOLUME), None)
    if current is None:
        holder = _mounter(pod_spec, names.CACHE_VOLUME)
        if holder is not None:
            # adding the volume would hand our cache to a container that expects another one
            raise Skip(
                SkipReason.VOLUME_CONFLICT,
                f"container {holder!r} mounts a volume named {names.CACHE_VOLUME!r} "
                "that the pod does not define",
            )
        added_volumes.append(wanted_volume)
    elif current != wanted_volume:
        raise Skip(
            SkipReason.VOLUME_CONFLICT,
            f"the pod already has a volume named {names.CACHE_VOLUME!r} that is not the cache",
        )

    # 2. the model mounts of every container that reads /mnt/models
    containers: list[dict[str, Any]] = pod_spec.get("containers") or []
    model_mount = _model_mount(spec)
    if not _retarget_model_mounts(pod_spec, model_mount, mode=spec.mode, ops=spec_ops):
        position, target = next(
            ((i, c) for i, c in enumerate(containers) if c.get("name") == names.KSERVE_CONTAINER),
            (-1, None),
        )
        if target is None:
            raise Skip(
                SkipReason.NO_MODEL_CONTAINER,
                f"no container mounts {names.MODEL_MOUNT_PATH} and none is named "
                f"{names.KSERVE_CONTAINER!r}",
            )
        mount = dict(model_mount)
        _append(spec_ops, f"/spec/containers/{position}", target, "volumeMounts", [mount])
        target["volumeMounts"] = [*(target.get("volumeMounts") or ()), mount]

    # 3. our storage-initializer, taking over KServe's (or ours from an earlier pass)
    existing = find_init_container(out, names.STORAGE_INITIALIZER)
    pod_security = pod_spec.get("securityContext")
    initializer = build_init_container(
        existing,
        spec=spec,
        template=config.initContainer,
        pod_security=pod_security if isinstance(pod_security, Mapping) else None,
    )
    init_containers: list[dict[str, Any]] = list(pod_spec.get("initContainers") or [])
    if existing is None:
        _append(spec_ops, "/spec", original, "initContainers", [initializer])
        init_containers.append(initializer)
    else:
        for position, container in enumerate(init_containers):
            if container.get("name") == names.STORAGE_INITIALIZER:
                if type(container) is dict:
                    spec_ops += member_ops(
                        f"/spec/initContainers/{position}", container, initializer
                    )
                elif not same(container, initializer):
                    spec_ops.append(replace_op(f"/spec/initContainers/{position}", initializer))
                init_containers[position] = initializer
    pod_spec["initContainers"] = init_containers

    # 4. the emptyDir: needed in copy mode, dropped in mount mode once nothing mounts it
    has_provision = any(v.get("name") == names.PROVISION_VOLUME for v in volumes)
    if spec.mode is ServingMode.COPY and not has_provision:
        added_volumes.append({"name": names.PROVISION_VOLUME, "emptyDir": {}})
    _append(spec_ops, "/spec", original, "volumes", added_volumes)
    volumes += added_volumes
    pod_spec["volumes"] = volumes
    if (
        spec.mode is ServingMode.MOUNT
        and has_provision
        and not _references(pod_spec, names.PROVISION_VOLUME)
    ):
        # highest index first: each removal leaves the indices below it as they were
        for index in reversed(range(len(volumes))):
            if volumes[index].get("name") == names.PROVISION_VOLUME:
                spec_ops.append(remove_op(f"/spec/volumes/{index}"))
        pod_spec["volumes"] = [v for v in volumes if v.get("name") != names.PROVISION_VOLUME]

    # 5. fsGroup only when the pod has none; never a recursive chown of the whole cache
    given_security = pod_spec.get("securityContext")
    security = dict(given_security) if isinstance(given_security, dict) else {}
    if isinstance(given_security, dict):
        for field, value in (
            ("fsGroup", policy.fs_group),
            ("fsGroupChangePolicy", "OnRootMismatch"),
        ):
            if field not in security:
                security[field] = value
                spec_ops.append(add_op(f"/spec/securityContext/{field}", value))
    else:
        security.update(fsGroup=policy.fs_group, fsGroupChangePolicy="OnRootMismatch")
        _set_member(spec_ops, "/spec", original, "securityContext", security)
    pod_spec["securityContext"] = security
    if given_spec is None:
        _set_member(ops, "", pod, "spec", pod_spec)

    # 6. the status annotation
    given_meta = pod.get("metadata")
    meta: dict[str, Any] = out.setdefault("metadata", {})
    given_annotations = meta.get("annotations")
    annotations = dict(given_annotations or {})
    annotations[names.STATUS] = status_annotation(spec, policy)
    meta["annotations"] = annotations
    if not isinstance(given_meta, dict):
        _set_member(ops, "", pod, "metadata", meta)
    elif type(given_annotations) is dict:
        _set_member(
            ops, "/metadata/annotations", given_annotations, names.STATUS, annotations[names.STATUS]
        )
    else:
        _set_member(ops, "/metadata", given_meta, "annotations", annotations)
    return Mutation(out, ops)
