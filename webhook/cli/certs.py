"""`kserve-cache certs`: a CA and serving certificate for the webhook Service, and its caBundle.

Every run makes a new CA, signs one serving certificate with it and discards the CA key; the
previous CAs (from the out-dir and, with --patch-webhook, from the cluster) stay in the bundle
for the overlap period so pods still serving the old certificate keep working during rollout.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webhook import certs

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CLUSTER = 1
EXIT_USAGE = 2


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "certs",
        help="create the webhook's CA and serving certificate, print the caBundle",
        description=(
            "Create a CA and a serving certificate for <service>.<namespace>.svc, write "
            "ca.crt (the caBundle: new CA first, then previous CAs still in their overlap), "
            "tls.crt and tls.key (mode 0600) into --out-dir, and print the base64 caBundle. "
            "The CA key is never written: each run is a rotation."
        ),
    )
    p.add_argument("--service", default="kserve-cache-webhook", help="webhook Service name")
    p.add_argument("--namespace", default="kserve-cache", help="webhook Service namespace")
    p.add_argument(
        "--out-dir",
        type=Path,
        default=Path("certs/cluster"),
        help="where ca.crt, tls.crt and tls.key are written (default certs/cluster)",
    )
    p.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    p.add_argument(
        "--overlap-days",
        type=float,
        default=None,
        help=(
            "keep a previous CA in the bundle for at most this many days after it was "
            "replaced (default: until it expires; 0 drops previous CAs at once)"
        ),
    )
    p.add_argument("--key-type", choices=["ec", "rsa"], default="ec", help="EC P-256 or RSA 2048")
    p.add_argument(
        "--patch-webhook",
        metavar="NAME",
        default=None,
        help="set caBundle on every webhook of this MutatingWebhookConfiguration",
    )
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: usual lookup)")
    p.add_argument("--context", default=None, help="kubeconfig context")
    p.set_defaults(run=run)


def _api_client(kubeconfig: str | None, context: str | None) -> ApiClient:
    from kubernetes import client, config

    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    api: ApiClient = config.new_client_from_config(config_file=kubeconfig, context=context)
    return api


def _read_previous(out_dir: Path) -> bytes:
    ca_file = out_dir / certs.CA_FILE
    return ca_file.read_bytes() if ca_file.is_file() else b""


def _ca_bundle_patch(webhook_config: Any, ca_bundle_b64: str) -> list[dict[str, Any]]:
    # A `test` op on each webhook's name makes the patch fail, rather than land on the wrong
    # entry, if someone reorders the webhooks between our read and our write.
    ops: list[dict[str, Any]] = []
    for index, hook in enumerate(webhook_config.webhooks or []):
        ops.append({"op": "test", "path": f"/webhooks/{index}/name", "value": hook.name})
        ops.append(
            {
                "op": "add",
                "path": f"/webhooks/{index}/clientConfig/caBundle",
                "value": ca_bundle_b64,
            }
        )
    return ops


def run(args: argparse.Namespace) -> int:
    from kubernetes.client import AdmissionregistrationV1Api
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config import ConfigException

    overlap = dt.timedelta(days=args.overlap_days) if args.overlap_days is not None else None
    if overlap is not None and overlap < dt.timedelta(0):
        logger.error("--overlap-days must not be negative")
        return EXIT_USAGE
    try:
        previous = _read_previous(args.out_dir)
        if previous:
            certs.load_certificates(previous)  # a broken file stops us before anything changes
    except (OSError, certs.CertError) as exc:
        logger.error("cannot read the previous CA bundle in %s: %s", args.out_dir, exc)
        return EXIT_USAGE

    api_client = None
    webhook_config = None
    try:
        if args.patch_webhook:
            try:
                api_client = _api_client(args.kubeconfig, args.context)
                api = AdmissionregistrationV1Api(api_client)
                webhook_config = api.read_mutating_webhook_configuration(args.patch_webhook)
            except (ApiException, ConfigException, OSError) as exc:
                logger.error(
                    "cannot read MutatingWebhookConfiguration %s: %s",
                    args.patch_webhook,
                    getattr(exc, "reason", None) or exc,
                )
                return EXIT_CLUSTER
            if not webhook_config.webhooks:
                logger.error("MutatingWebhookConfiguration %s has no webhooks", args.patch_webhook)
                return EXIT_CLUSTER
            # The bundle in the cluster counts as previous too: a lost out-dir must not
            # drop the CA that the running pods' certificates chain to.
            for hook in webhook_config.webhooks:
                in_cluster = (hook.client_config.ca_bundle or "").strip()
                if in_cluster:
                    try:
                        pem = base64.b64decode(in_cluster, validate=True)
                        certs.load_certificates(pem)
                    except (ValueError, certs.CertError):
                        logger.warning("ignoring an unreadable caBundle on webhook %s", hook.name)
                    else:
                        previous += pem

        try:
            ca = certs.generate_ca(days=args.days, key_type=args.key_type)
            serving = certs.generate_serving_cert(
                ca,
                dns_names=certs.service_dns_names(args.service, namespace=args.namespace),
                days=args.days,
                key_type=args.key_type,
            )
            bundle = certs.build_ca_bundle(ca.cert_pem, previous_pem=previous, overlap=overlap)
        except certs.CertError as exc:
            logger.error("%s", exc)
            return EXIT_USAGE
        files = certs.write_pem_files(args.out_dir, ca_bundle_pem=bundle, serving=serving)
        kept = len(certs.load_certificates(bundle))
        logger.info(
            "wrote %s, %s, %s (%d CA(s) in the bundle)",
            files.ca_file,
            files.cert_file,
            files.key_file,
            kept,
        )
        ca_bundle_b64 = base64.b64encode(bundle).decode("ascii")

        if webhook_config is not None and api_client is not None:
            try:
                AdmissionregistrationV1Api(api_client).patch_mutating_webhook_configuration(
                    args.patch_webhook, _ca_bundle_patch(webhook_config, ca_bundle_b64)
                )
            except (ApiException, OSError) as exc:
                logger.error(
                    "cannot patch MutatingWebhookConfiguration %s: %s (certificates are in %s)",
                    args.patch_webhook,
                    getattr(exc, "reason", None) or exc,
                    args.out_dir,
                )
                return EXIT_CLUSTER
            logger.info(
                "patched caBundle of %d webhook(s) in MutatingWebhookConfiguration %s",
                len(webhook_config.webhooks),
                args.patch_webhook,
            )
    finally:
        if api_client is not None:
            api_client.close()
            # close() stops the thread pool only; drop the kept-alive connections too.
            api_client.rest_client.pool_manager.clear()

    sys.stdout.write(ca_bundle_b64 + "\n")
    return EXIT_OK
