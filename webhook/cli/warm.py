"""`kserve-cache warm`: fill a cache entry before traffic arrives (as a Job), with the same
lease, download and atomic publish as `fetch`; the URI comes from the command line or from an
InferenceService manifest.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from webhook import names
from webhook.cli.fetch import TERMINATED_MESSAGE, Terminated, add_lease_arguments, on_sigterm
from webhook.keys import cache_key, is_valid_revision, source_endpoint

logger = logging.getLogger(__name__)


class IsvcError(ValueError):
    """An InferenceService manifest that does not name a cacheable model."""


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "warm",
        help="pre-populate a cache entry without a pod waiting on it",
        description="Download a model into the cache (or find it there) so the first pod hits. "
        "Prints the same JSON line as `fetch`.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--uri", help="model URI, any scheme KServe supports")
    source.add_argument(
        "--from-isvc",
        type=Path,
        metavar="FILE",
        help="InferenceService YAML/JSON: its predictor's storageUri and cache revision",
    )
    p.add_argument("--revision", help="revision, part of the key (default: none, or the isvc's)")
    p.add_argument("--cache-root", required=True, type=Path, help="mount path of the cache PVC")
    p.add_argument(
        "--endpoint",
        default=None,
        help="the source endpoint mixed into the key (default: from this process's "
        "environment, as the webhook computes it from plain env vars)",
    )
    add_lease_arguments(p)
    from webhook.cache.probe import add_probe_arguments

    add_probe_arguments(p)
    p.set_defaults(run=run)


def source_of_isvc(isvc: Mapping[str, Any]) -> tuple[str, str]:
    """The model URI and cache revision of an InferenceService's predictor.

    The URI is `spec.predictor.model.storageUri`, else a framework's (`sklearn`, `pytorch`…)
    `storageUri`, else our `storage-uri` annotation. The revision annotation on the predictor
    wins over the one on the InferenceService, as KServe copies it onto the pods.
    """
    if not isinstance(isvc, Mapping) or isvc.get("kind") != "InferenceService":
        raise IsvcError("not an InferenceService (kind must be InferenceService)")
    spec = isvc.get("spec") or {}
    predictor = spec.get("predictor") if isinstance(spec, Mapping) else None
    if not isinstance(predictor, Mapping):
        raise IsvcError("the InferenceService has no spec.predictor")
    annotations = {
        **_annotations(isvc.get("metadata")),
        **_annotations(predictor),
    }
    uri = ""
    model = predictor.get("model")
    if isinstance(model, Mapping) and model.get("storageUri"):
        uri = str(model["storageUri"])
    else:
        for name, value in sorted(predictor.items()):
            if name != "model" and isinstance(value, Mapping) and value.get("storageUri"):
                uri = str(value["storageUri"])
                break
    uri = uri or annotations.get(names.STORAGE_URI, "")
    if not uri:
        raise IsvcError("the predictor has no storageUri (nor a cache.kserve.io/storage-uri)")
    if uri.startswith("pvc://"):
        raise IsvcError(f"{uri} is already on a volume; pvc:// models are not cached")
    return uri, annotations.get(names.REVISION, "")


def _annotations(obj: object) -> dict[str, str]:
    found = obj.get("annotations") if isinstance(obj, Mapping) else None
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, Mapping) else {}


def load_isvc(path: Path) -> Mapping[str, Any]:
    """The first InferenceService in a YAML (or JSON) file, which may hold several documents."""
    import yaml

    try:
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as exc:
        raise IsvcError(f"cannot read {path}: {exc}") from exc
    for doc in docs:
        if isinstance(doc, Mapping) and doc.get("kind") == "InferenceService":
            return doc
    raise IsvcError(f"{path} holds no InferenceService")


def run(args: argparse.Namespace) -> int:
    from webhook.cache.download import default_downloader
    from webhook.cache.fetch import FetchError, Settings, check_writable
    from webhook.cache.layout import Layout
    from webhook.cache.versioned import Options, fetch_versioned

    try:
        if args.from_isvc is not None:
            uri, revision = source_of_isvc(load_isvc(args.from_isvc))
        else:
            uri, revision = args.uri, ""
    except IsvcError as exc:
        return _fail("bad-arguments", 2, str(exc), uri="", revision="")
    if args.revision is not None:
        revision = args.revision
    if revision and not is_valid_revision(revision):
        return _fail("bad-arguments", 2, f"invalid revision {revision!r}", uri=uri, revision="")
    root: Path = args.cache_root
    if not root.is_dir():
        return _fail(
            "cache-not-writable",
            5,
            f"cache root {root} is not a directory: is the cache PVC mounted there?",
            uri=uri,
            revision=revision,
        )
    endpoint = source_endpoint(uri, os.environ) if args.endpoint is None else args.endpoint
    key = cache_key(uri, revision, endpoint)
    start = time.monotonic()
    # A stopped Job gets SIGTERM: unwind so the staging folder is removed and the lease freed.
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        from webhook.cache.probe import probe_from_args

        check_writable(Layout(root))
        probe_from_args(root, args)
        # Through the versions layer: a key whose ref a quarantine left dangling is
        # published as a version again (a plain folder cannot replace a ref).
        served = fetch_versioned(
            Layout(root),
            uri=uri,
            key=key,
            revision=revision,
            downloader=default_downloader(),
            options=Options(),
            settings=Settings(
                args.lease_ttl, args.wait_timeout, args.stall_timeout, args.progress_interval
            ),
            endpoint=endpoint,
        )
        result = served.result
    except FetchError as exc:
        return _fail(exc.kind.value, exc.kind.exit_code, exc.message, uri=uri, revision=revision,
                     key=key)  # fmt: skip
    except Terminated as exc:
        return _fail("terminated", exc.code, TERMINATED_MESSAGE, uri=uri, revision=revision,
                     key=key)  # fmt: skip
    _emit(
        {
            "outcome": result.outcome,
            "key": result.key,
            "uri": result.uri,
            "revision": result.revision,
            "bytes": result.bytes,
            "files": result.files,
            "seconds": round(time.monotonic() - start, 3),
            "download_seconds": round(result.download_seconds, 3),
            "path": str(result.path),
            "version": served.to_dict(),
        }
    )
    return 0


def _fail(
    kind: str, code: int, message: str, *, uri: str, revision: str, key: str | None = None
) -> int:
    logger.error("%s", message)
    _emit(
        {
            "outcome": "error",
            "error": kind,
            "exit_code": code,
            "message": message,
            "key": key if key is not None else (cache_key(uri, revision) if uri else ""),
            "uri": uri,
            "revision": revision,
            "bytes": 0,
            "seconds": 0.0,
        }
    )
    return code


def _emit(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
    sys.stdout.flush()
