"""`kserve-cache preview`: what the webhook would do to a Pod, a workload, an InferenceService's
predictor pod or an AdmissionReview, offline, against a cluster's policy, or asked of a running
webhook. Never writes to a cluster. Exit 0 ran, 1 could not ask, 2 bad input, 3 skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from webhook.clusterconfig import ClusterConfig
    from webhook.namespaces import ClaimInfo, NamespaceView
    from webhook.preview import Result, Target

logger = logging.getLogger(__name__)

CONFIG_MAP: Final = "kserve-cache/kserve-cache-config"
CONFIG_KEY: Final = "config.yaml"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_BAD_INPUT: Final = 2
EXIT_SKIPPED: Final = 3


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "preview",
        help="dry run: what the webhook would do to pods, workloads, InferenceServices",
        description=(
            "Show what the webhook would do, without writing anything to a cluster: to a Pod, "
            "the pod template of a Deployment/ReplicaSet/StatefulSet/DaemonSet/Job/CronJob or "
            "Knative Service, the predictor pod of an InferenceService (made and passed "
            "through KServe's pod mutator as KServe would), or an AdmissionReview. Outcomes, "
            "skip reasons and warnings go to stderr; stdout holds only the -o output. "
            "Exit 0: it ran; 1: the cluster or webhook could not be asked; 2: bad input; "
            "3: --fail-on-skip and a document was skipped."
        ),
    )
    p.add_argument(
        "-f",
        "--filename",
        required=True,
        action="append",
        metavar="FILE",
        help="YAML or JSON, one or more documents ('-' reads stdin); repeatable",
    )
    p.add_argument(
        "-o",
        "--output",
        choices=("patch", "yaml", "json", "diff"),
        default="patch",
        help="patch: the JSON patch (default); yaml/json: the patched object (a workload with "
        "its patched template); diff: a unified diff",
    )
    p.add_argument(
        "--explain",
        action="store_true",
        help="for each document, every setting, its value and the layer that decided it, and "
        "the skip reason (to stderr)",
    )
    p.add_argument(
        "--no-kserve",
        dest="kserve_first",
        action="store_false",
        help="do not emulate KServe's pod mutator first: show the first call, where the "
        "webhook waits for KServe (awaiting-kserve)",
    )
    p.add_argument(
        "-n",
        "--namespace",
        help="namespace of objects that name none (default: 'default', or the one Namespace "
        "of --namespace-file)",
    )
    p.add_argument("--config", type=Path, help="cluster config YAML (default: built-in)")
    p.add_argument(
        "--namespace-annotation",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an annotation of the pod's Namespace (repeatable; over --namespace-file/--cluster)",
    )
    p.add_argument(
        "--namespace-file",
        type=Path,
        metavar="FILE",
        help="YAML with the Namespace object(s) whose annotations apply",
    )
    p.add_argument(
        "--cluster",
        action="store_true",
        help=f"read the cluster config (ConfigMap {CONFIG_MAP}, key {CONFIG_KEY}) and the "
        "Namespaces from the current kubeconfig context (read only)",
    )
    p.add_argument("--kubeconfig", help="kubeconfig file for --cluster (default: as kubectl)")
    p.add_argument("--context", help="kubeconfig context for --cluster")
    p.add_argument(
        "--config-map",
        default=CONFIG_MAP,
        metavar="NAMESPACE/NAME",
        help=f"where --cluster finds the cluster config (default {CONFIG_MAP})",
    )
    p.add_argument(
        "--webhook-url",
        metavar="URL",
        help="send each AdmissionReview to this running webhook (path /mutate when none is "
        "given) and show its answer",
    )
    p.add_argument("--cacert", type=Path, help="CA bundle that signed --webhook-url's cert")
    p.add_argument(
        "--fail-on-skip",
        action="store_true",
        help="exit 3 when any document is skipped",
    )
    p.add_argument(
        "--ignore-unknown",
        action="store_true",
        help="pass over documents of other kinds instead of failing (they are not printed)",
    )
    p.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the diff (auto: when stdout is a terminal and NO_COLOR is unset)",
    )
    p.set_defaults(run=run)


class _Failed(Exception):
    """Stop with this exit code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _say(message: str) -> None:
    print(message, file=sys.stderr)  # noqa: T201


def _read_input(name: str) -> tuple[str, str]:
    if name == "-":
        return sys.stdin.read(), "<stdin>"
    try:
        return Path(name).read_text(encoding="utf-8"), name
    except (OSError, UnicodeDecodeError) as exc:
        raise _Failed(EXIT_BAD_INPUT, f"preview: cannot read {name}: {exc}") from exc


def _annotation_flags(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise _Failed(
                EXIT_BAD_INPUT, f"preview: --namespace-annotation {item!r}: expected KEY=VALUE"
            )
        out[key.strip()] = value
    return out


def _namespace_file(path: Path) -> dict[str, dict[str, str]]:
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise _Failed(EXIT_BAD_INPUT, f"preview: --namespace-file {path}: {exc}") from exc
    found: dict[str, dict[str, str]] = {}
    for position, doc in enumerate(docs, 1):
        meta = doc.get("metadata") if isinstance(doc, Mapping) else None
        if (
            not isinstance(doc, Mapping)
            or doc.get("kind") != "Namespace"
            or not (isinstance(meta, Mapping) and isinstance(meta.get("name"), str))
        ):
            raise _Failed(
                EXIT_BAD_INPUT,
                f"preview: --namespace-file {path}: document {position} is not a Namespace "
                "with a metadata.name",
            )
        annotations = meta.get("annotations") or {}
        if not isinstance(annotations, Mapping) or not all(
            isinstance(v, str) for v in annotations.values()
        ):
            raise _Failed(
                EXIT_BAD_INPUT,
                f"preview: --namespace-file {path}: Namespace {meta['name']}: annotations must "
                "be a mapping of strings (quote values in YAML)",
            )
        found[meta["name"]] = {str(k): v for k, v in annotations.items()}
    return found


def _webhook_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _Failed(EXIT_BAD_INPUT, f"preview: --webhook-url {url!r}: expected https://HOST/…")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/mutate")
    return urlunsplit(parts)


def _ask_webhook(targets: list[Target], *, url: str, cacert: Path | None) -> list[Result]:
    import ssl

    import httpx

    from webhook.preview import ResponseError, from_response

    try:
        verify = ssl.create_default_context(cafile=str(cacert) if cacert else None)
    except (OSError, ssl.SSLError) as exc:
        raise _Failed(EXIT_BAD_INPUT, f"preview: --cacert {cacert}: {exc}") from exc
    results = []
    try:
        with httpx.Client(verify=verify, timeout=15.0) as client:
            for target in targets:
                answer = client.post(url, json=target.body)
                if answer.status_code != 200:
                    raise _Failed(
                        EXIT_FAILED,
                        f"preview: {target.label}: {url} answered HTTP {answer.status_code}: "
                        f"{answer.text[:500]}",
                    )
                try:
                    results.append(from_response(target, answer.json(), url=url))
                except (ValueError, ResponseError) as exc:
                    raise _Failed(
                        EXIT_FAILED, f"preview: {target.label}: bad answer from {url}: {exc}"
                    ) from exc
    except httpx.HTTPError as exc:
        raise _Failed(EXIT_FAILED, f"preview: cannot reach the webhook at {url}: {exc}") from exc
    return results


@dataclass(frozen=True)
class _ClusterView:
    config: ClusterConfig | None
    annotations: dict[str, Mapping[str, str] | None]  # None: no such Namespace
    claims: dict[str, Mapping[str, ClaimInfo] | None]  # None: could not be listed


def _claims(listing: Mapping[str, Any]) -> dict[str, ClaimInfo]:
    from webhook.namespaces import ClaimInfo

    found: dict[str, ClaimInfo] = {}
    for item in listing.get("items") or ():
        meta = item.get("metadata") or {}
        if not isinstance(meta.get("name"), str) or meta.get("deletionTimestamp"):
            continue  # a claim being deleted cannot be mounted by new pods: missing
        modes = (item.get("spec") or {}).get("accessModes") or ()
        phase = (item.get("status") or {}).get("phase") or ""
        found[meta["name"]] = ClaimInfo(access_modes=tuple(map(str, modes)), phase=str(phase))
    return found


def _read_cluster(args: argparse.Namespace, namespaces: set[str]) -> _ClusterView:
    """The cluster config, and each namespace's annotations and claims; GET requests only."""
    from kubernetes import client
    from kubernetes import config as kube_config
    from kubernetes.client.exceptions import ApiException

    from webhook.clusterconfig import ConfigError, parse_config

    cm_namespace, _, cm_name = args.config_map.partition("/")
    if not cm_name:
        raise _Failed(EXIT_BAD_INPUT, f"preview: --config-map {args.config_map!r}: NAMESPACE/NAME")
    configuration = client.Configuration()
    try:
        kube_config.load_kube_config(
            config_file=args.kubeconfig, context=args.context, client_configuration=configuration
        )
    except Exception as exc:  # ConfigException, a missing or broken file
        raise _Failed(EXIT_FAILED, f"preview: --cluster: no usable kubeconfig: {exc}") from exc
    configuration.retries = 1
    api = client.ApiClient(configuration)

    def get(call: Any, *call_args: str, missing: tuple[int, ...] = (404,)) -> dict[str, Any] | None:
        try:
            response = call(*call_args, _preload_content=False, _request_timeout=(5, 15))
        except ApiException as exc:
            if exc.status in missing:
                return None
            raise _Failed(
                EXIT_FAILED, f"preview: --cluster: {configuration.host}: {exc.status} {exc.reason}"
            ) from exc
        except Exception as exc:
            raise _Failed(
                EXIT_FAILED, f"preview: --cluster: cannot reach {configuration.host}: {exc}"
            ) from exc
        try:
            data: dict[str, Any] = json.loads(response.data)
        finally:
            response.release_conn()
        return data

    try:
        core = client.CoreV1Api(api)
        config: ClusterConfig | None = None
        found = get(core.read_namespaced_config_map, cm_name, cm_namespace)
        if found is None:
            _say(
                f"preview: --cluster: ConfigMap {args.config_map} not found at "
                f"{configuration.host}: using the built-in defaults"
            )
        else:
            text = (found.get("data") or {}).get(CONFIG_KEY)
            if text is None:
                _say(f"preview: --cluster: ConfigMap {args.config_map} has no {CONFIG_KEY}")
            else:
                try:
                    config = parse_config(text, source=f"ConfigMap {args.config_map}")
                except ConfigError as exc:
                    raise _Failed(EXIT_FAILED, f"preview: --cluster: {exc}") from exc
        annotations: dict[str, Mapping[str, str] | None] = {}
        claims: dict[str, Mapping[str, ClaimInfo] | None] = {}
        for name in sorted(namespaces):
            obj = get(core.read_namespace, name)
            if obj is None:
                _say(f"preview: --cluster: Namespace {name} not found: no namespace policy")
                annotations[name] = None
            else:
                raw = (obj.get("metadata") or {}).get("annotations") or {}
                annotations[name] = {str(k): str(v) for k, v in raw.items()}
            listing = get(core.list_namespaced_persistent_volume_claim, name, missing=(403, 404))
            if listing is None:
                _say(
                    f"preview: --cluster: cannot list PersistentVolumeClaims in {name}: "
                    "the cache claim is not checked"
                )
                claims[name] = None
            else:
                claims[name] = _claims(listing)
        return _ClusterView(config, annotations, claims)
    finally:
        api.close()


def _use_colour(choice: str, stream: IO[str]) -> bool:
    if choice != "auto":
        return choice == "always"
    return stream.isatty() and not os.environ.get("NO_COLOR")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except _Failed as failed:
        _say(str(failed))
        return failed.code


def _run(args: argparse.Namespace) -> int:
    from webhook.clusterconfig import ClusterConfig, ConfigError
    from webhook.config import load_config
    from webhook.namespaces import NamespaceView
    from webhook.preview import (
        DEFAULT_NAMESPACE,
        PreviewError,
        evaluate,
        explain,
        parse_documents,
        plan,
        render_diff,
        render_objects,
        render_patches,
        summary,
    )

    if args.webhook_url and (
        args.config or args.cluster or args.namespace_annotation or args.namespace_file
    ):
        raise _Failed(
            EXIT_BAD_INPUT,
            "preview: --webhook-url asks a running webhook, which uses its own config and "
            "Namespaces: drop --config, --cluster, --namespace-annotation, --namespace-file",
        )
    if args.cacert and not args.webhook_url:
        raise _Failed(EXIT_BAD_INPUT, "preview: --cacert goes with --webhook-url")
    flags = _annotation_flags(args.namespace_annotation)
    from_file = _namespace_file(args.namespace_file) if args.namespace_file else {}
    config = ClusterConfig()
    if args.config:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            raise _Failed(EXIT_BAD_INPUT, f"preview: --config: {exc}") from exc

    fallback = next(iter(from_file)) if len(from_file) == 1 else DEFAULT_NAMESPACE
    targets: list[Target] = []
    for filename in args.filename:
        text, source = _read_input(filename)
        try:
            targets += plan(
                parse_documents(text, source=source),
                namespace=args.namespace,
                fallback_namespace=fallback,
                kserve_first=args.kserve_first,
                ignore_unknown=args.ignore_unknown,
            )
        except PreviewError as exc:
            raise _Failed(EXIT_BAD_INPUT, f"preview: {source}: {exc}") from exc
    if not targets:
        raise _Failed(EXIT_BAD_INPUT, "preview: no document preview understands")

    if args.webhook_url:
        results = _ask_webhook(targets, url=_webhook_url(args.webhook_url), cacert=args.cacert)
    else:
        cluster = _ClusterView(None, {}, {})
        if args.cluster:
            cluster = _read_cluster(args, {t.namespace for t in targets})
            if cluster.config is not None and not args.config:
                config = cluster.config

        def view(name: str) -> NamespaceView | None:
            layers = [cluster.annotations.get(name), from_file.get(name), flags or None]
            claims = cluster.claims.get(name)
            if all(layer is None for layer in layers) and claims is None:
                return None
            merged: dict[str, str] | None = None
            for layer in layers:
                if layer is not None:
                    merged = {**(merged or {}), **layer}
            return NamespaceView(name=name, annotations=merged, claims=claims)

        for name in sorted({t.namespace for t in targets}):
            if from_file and name not in from_file:
                _say(f"preview: --namespace-file has no Namespace {name}")
        results = [evaluate(t, config=config, namespace=view(t.namespace)) for t in targets]

    for result in results:
        _say(explain(result) if args.explain else summary(result))
        if not args.explain:
            for warning in result.warnings:
                _say(f"  warning: {warning}")

    if args.output == "patch":
        out = render_patches(results)
    elif args.output == "diff":
        out = render_diff(results, color=_use_colour(args.color, sys.stdout))
    else:
        out = render_objects(results, fmt=args.output)
    sys.stdout.write(out)
    sys.stdout.flush()
    if args.fail_on_skip and any(r.skipped for r in results):
        return EXIT_SKIPPED
    return EXIT_OK
