"""`kserve-cache share`: bind other namespaces to the volume behind one namespace's cache claim,
so a model is downloaded once per cluster. Prints the PersistentVolumes and claims as YAML, or
creates them with `--apply`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final

from webhook.share import ShareError, SharePlan, ShareTarget, plan_share, same_volume

logger = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_BAD_INPUT: Final = 2
DEFAULT_CLAIM: Final = "kserve-model-cache"


class _Failed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def add_parser(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "share",
        help="bind other namespaces to the volume of one namespace's cache claim",
        description="Read the writer's bound claim NAMESPACE/CLAIM and its PersistentVolume, "
        "and print (or create, with --apply) for each --to namespace a PersistentVolume on the "
        "same storage (same CSI driver and volumeHandle, or NFS server and path; reclaim "
        "policy Retain; pre-bound by claimRef) and the claim that binds it. Refuses volumes "
        "that cannot be shared safely (hostPath, local, block disks, unbound claims).",
    )
    p.add_argument("source", metavar="NAMESPACE/CLAIM", help="the writer's bound cache claim")
    p.add_argument(
        "--to",
        action="append",
        required=True,
        metavar="NAMESPACE",
        help="a namespace to bind to the same volume (repeat for several)",
    )
    p.add_argument(
        "--claim",
        default=None,
        help="name of the claim in each target namespace (default: the writer's claim name)",
    )
    p.add_argument(
        "--read-only",
        action="store_true",
        help="ReadOnlyMany claims and read-only volumes: the targets can read, never write",
    )
    p.add_argument("--apply", action="store_true", help="create the objects (default: print)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then as kubectl)")
    p.add_argument("--context", help="kubeconfig context")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        namespace, _, claim_name = args.source.partition("/")
        if not namespace or not claim_name or "/" in claim_name:
            raise _Failed(EXIT_BAD_INPUT, f"{args.source!r}: give the claim as NAMESPACE/CLAIM")
        targets = [ShareTarget(ns, args.claim or claim_name) for ns in args.to]
        api = _Api(args.kubeconfig, args.context)
        claim = api.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim_name}")
        if claim is None:
            raise _Failed(EXIT_BAD_INPUT, f"claim {args.source} not found")
        volume_name = (claim.get("spec") or {}).get("volumeName")
        pv = api.get(f"/api/v1/persistentvolumes/{volume_name}") if volume_name else None
        if volume_name and pv is None:
            raise _Failed(EXIT_BAD_INPUT, f"volume {volume_name} of {args.source} not found")
        try:
            plan = plan_share(
                claim,
                pv or {"metadata": {}, "spec": {}},
                targets=targets,
                read_only=args.read_only,
            )
        except ShareError as exc:
            raise _Failed(EXIT_BAD_INPUT, str(exc)) from exc
        for warning in plan.warnings:
            sys.stderr.write(f"kserve-cache share: warning: {warning}\n")
        if args.apply:
            _apply(api, plan)
        else:
            sys.stdout.write(render(plan))
    except _Failed as exc:
        sys.stderr.write(f"kserve-cache share: error: {exc.message}\n")
        return exc.code
    return EXIT_OK


def render(plan: SharePlan) -> str:
    import yaml

    head = (
        f"# kserve-cache share {plan.source_claim}: volume {plan.source_volume} "
        f"({plan.identity}), {plan.access_mode}\n"
    )
    body = yaml.safe_dump_all(list(plan.objects), sort_keys=False, explicit_start=True)
    return head + body


def _apply(api: _Api, plan: SharePlan) -> None:
    """Create what is missing. An object there already is fine when it is this very binding
    (a re-run); any other one stops everything before a single object is created."""
    missing: list[tuple[str, str, dict[str, Any]]] = []
    for obj in plan.objects:
        meta = obj["metadata"]
        if obj["kind"] == "PersistentVolume":
            collection, what = "/api/v1/persistentvolumes", f"persistentvolume/{meta['name']}"
        else:
            collection = f"/api/v1/namespaces/{meta['namespace']}/persistentvolumeclaims"
            what = f"{meta['namespace']}: persistentvolumeclaim/{meta['name']}"
        found = api.get(f"{collection}/{meta['name']}")
        if found is None:
            missing.append((collection, what, obj))
        elif not is_same_binding(found, obj):
            bound = (found.get("spec") or {}).get("volumeName")
            raise _Failed(
                EXIT_FAILED,
                f"{what} exists and is not this binding"
                + (f" (bound to volume {bound})" if bound else "")
                + "; nothing was created. A claim made from a StorageClass is a new, empty "
                "volume: delete it (and its data) or choose another claim name with --claim",
            )
        else:
            sys.stdout.write(f"{what} unchanged\n")
    for collection, what, obj in missing:
        if api.create(collection, obj):
            sys.stdout.write(f"{what} created\n")
        else:  # created by someone else since we looked: check it as above
            found = api.get(f"{collection}/{obj['metadata']['name']}")
            if found is None or not is_same_binding(found, obj):
                raise _Failed(EXIT_FAILED, f"{what} was just created by someone else, differently")
            sys.stdout.write(f"{what} unchanged\n")


def is_same_binding(found: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """An existing object that already is what `share` would create (a re-run is a no-op)."""
    spec = found.get("spec") or {}
    if wanted["kind"] == "PersistentVolume":
        ref, want = spec.get("claimRef") or {}, wanted["spec"]["claimRef"]
        return same_volume(found, wanted) and (ref.get("namespace"), ref.get("name")) == (
            want["namespace"],
            want["name"],
        )
    return bool(spec.get("volumeName") == wanted["spec"]["volumeName"])


class _Api:
    """GET and POST of raw JSON through the kubernetes client's configuration and pool."""

    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        from kubernetes import client, config

        configuration = client.Configuration()
        try:
            if kubeconfig or context:
                config.load_kube_config(
                    config_file=kubeconfig, context=context, client_configuration=configuration
                )
            else:
                try:
                    config.load_incluster_config(client_configuration=configuration)
                except config.ConfigException:
                    config.load_kube_config(client_configuration=configuration)
        except Exception as exc:  # ConfigException, a missing or broken file
            raise _Failed(EXIT_FAILED, f"no usable kubeconfig: {exc}") from exc
        configuration.retries = 1
        self.host = configuration.host
        self.api = client.ApiClient(configuration)

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            response = self.api.call_api(
                path,
                method,
                header_params={"Accept": "application/json", "Content-Type": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=(5, 30),
            )
        except ApiException as exc:
            try:
                message = json.loads(exc.body or "{}").get("message") or exc.reason
            except ValueError:
                message = exc.reason
            return int(exc.status or 0), message
        except Exception as exc:
            raise _Failed(EXIT_FAILED, f"cannot reach {self.host}: {exc}") from exc
        raw = response[0] if isinstance(response, tuple) else response
        try:
            return int(raw.status), json.loads(raw.data)
        finally:
            raw.release_conn()

    def get(self, path: str) -> dict[str, Any] | None:
        status, data = self._call("GET", path)
        if status == 404:
            return None
        if status != 200:
            raise _Failed(EXIT_FAILED, f"GET {path}: {status} {data}")
        found: dict[str, Any] = data
        return found

    def create(self, collection: str, obj: Mapping[str, Any]) -> bool:
        """True when created, False when it exists already."""
        status, data = self._call("POST", collection, dict(obj))
        if status == 409:
            return False
        if status not in (200, 201):
            raise _Failed(EXIT_FAILED, f"POST {collection}: {status} {data}")
        return True


# --- doctor: the shared-volume checks (called from webhook/cli/doctor.py) --------------------

DOCTOR_DOCS: Final = "docs/trust-model.md#two-traps"


def doctor_results(
    get: Callable[[str], dict[str, Any] | None],
    claim: Mapping[str, Any],
    volume: Mapping[str, Any] | None,
    *,
    ref: str,
    shared_claim: str | None,
) -> list[Any]:
    """`shared <ref>`: the claim is bound to the writer's volume (the one `--shared-claim`
    names, else the one its `cache.kserve.io/shared-from` annotation names); none when the
    claim is not meant to be shared. `get` reads a raw object by API path (None: absent)."""
    from webhook.doctor import GROUP_NAMESPACES, Result, Status
    from webhook.share import check_shared_volume, shared_source

    source = shared_claim or shared_source(claim)
    if not source or source == ref:
        return []
    source_ns, _, source_name = source.partition("/")
    try:
        writer = get(f"/api/v1/namespaces/{source_ns}/persistentvolumeclaims/{source_name}")
        source_pv_name = ((writer or {}).get("spec") or {}).get("volumeName")
        source_pv = get(f"/api/v1/persistentvolumes/{source_pv_name}") if source_pv_name else None
    except Exception as exc:  # forbidden, unreachable: say so, do not guess
        return [
            Result(
                GROUP_NAMESPACES,
                f"shared {ref}",
                Status.WARN,
                f"cannot read the writer's claim {source} or its volume ({exc}): not checked",
                "run doctor with credentials that may get claims and persistentvolumes",
                DOCTOR_DOCS,
            )
        ]
    verdict = check_shared_volume(
        claim_ref=ref, volume=volume, source_ref=source, source_volume=source_pv
    )
    status = Status.OK if verdict.ok else Status.FAIL
    return [
        Result(GROUP_NAMESPACES, f"shared {ref}", status, verdict.detail, verdict.hint, DOCTOR_DOCS)
    ]


def doctor_separate_caches(volumes: Mapping[str, Mapping[str, Any]]) -> list[Any]:
    """A warning per StorageClass whose namespaces each have their own cache volume."""
    from webhook.doctor import GROUP_NAMESPACES, Result, Status
    from webhook.share import separate_caches

    return [
        Result(
            GROUP_NAMESPACES,
            "one-cache-per-cluster",
            Status.WARN,
            line,
            "bind them to one volume: kserve-cache share WRITER_NS/CLAIM --to NS --read-only",
            DOCTOR_DOCS,
        )
        for line in separate_caches(volumes)
    ]
