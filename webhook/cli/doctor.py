"""`kserve-cache doctor`: named checks of an installation (✓ ok, ! warning, ✗ failure), each with
a one-line hint and a docs link, like `linkerd check`.

Against a cluster (kubeconfig, read-only GETs): the webhook Deployment, its certificate, the
caBundle, the configuration's order and selectors, KServe's pod mutator, the cluster config, and
the cache claim of every namespace that opts in. On a cache volume (`--cache-root`, in a pod or
on a node): the capability probe, ownership and mode, free space and inodes, and a small,
bounded measurement of throughput and metadata latency. The verdicts are `webhook.doctor`'s.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import secrets
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from webhook import doctor
from webhook.doctor import Report, Result, Status

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

logger = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
MAX_BENCH_BYTES: Final = 1024**3
SCRATCH: Final = ".doctor"


def _size(text: str) -> int:
    from webhook.cache.gc import parse_size

    try:
        value = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 <= value <= MAX_BENCH_BYTES:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1Gi, got {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 10000, got {value}")
    return value


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="check an installation (cluster) or a cache volume: named checks with hints",
        description=(
            "Check the installation against a cluster (read-only; kubeconfig from --kubeconfig, "
            "KUBECONFIG, ~/.kube/config or in-cluster), or a cache volume with --cache-root. "
            "Exit status 1 when a check fails (✗), 0 otherwise (warnings are !)."
        ),
    )
    p.add_argument(
        "-o", "--output", choices=["text", "json"], default="text", help="text (default) or json"
    )
    c = p.add_argument_group("cluster checks")
    c.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: usual lookup)")
    c.add_argument("--context", default=None, help="kubeconfig context")
    c.add_argument(
        "--namespace", default="kserve-cache", help="the webhook's namespace (default kserve-cache)"
    )
    c.add_argument("--deployment", default="kserve-cache-webhook", help="the webhook Deployment")
    c.add_argument("--service", default="kserve-cache-webhook", help="the webhook Service")
    c.add_argument(
        "--webhook-config",
        default="kserve-cache",
        help="the MutatingWebhookConfiguration (default kserve-cache)",
    )
    c.add_argument(
        "--configmap", default="kserve-cache-config", help="the cluster config ConfigMap"
    )
    c.add_argument(
        "--check-namespace",
        action="append",
        default=None,
        metavar="NS",
        dest="check_namespaces",
        help="check the cache claim of this namespace (repeatable; default: every namespace "
        "that opts in)",
    )
    c.add_argument(
        "--shared-claim",
        default=None,
        metavar="NS/CLAIM",
        help="the writer's claim of a shared cache: every checked claim must be on its volume "
        "(default: the claims `kserve-cache share` made are checked against their writer)",
    )
    c.add_argument(
        "--webhook-url",
        default=None,
        metavar="URL",
        help="also connect to the running webhook (e.g. https://localhost:8443 through "
        "`kubectl -n kserve-cache port-forward svc/kserve-cache-webhook 8443:443`): TLS "
        "checked against the caBundle for the Service's name, /readyz, the certificate served",
    )
    c.add_argument(
        "--cert-warn-days",
        type=_count,
        default=doctor.CERT_WARN_DAYS,
        help=f"warn when the serving certificate expires sooner (default {doctor.CERT_WARN_DAYS})",
    )
    v = p.add_argument_group("volume checks")
    v.add_argument(
        "--cache-root",
        type=Path,
        default=None,
        help="check this cache volume instead of the cluster (add --kubeconfig for both)",
    )
    v.add_argument(
        "--read-only",
        action="store_true",
        help="the volume is mounted read-only here: measure reads only, write nothing",
    )
    v.add_argument(
        "--bench-bytes",
        type=_size,
        default=64 * 1024 * 1024,
        metavar="SIZE",
        help="size of the throughput test file (default 64Mi, at most 1Gi, 0 skips it)",
    )
    v.add_argument(
        "--metadata-files",
        type=_count,
        default=50,
        metavar="N",
        help="files created, stat'ed, renamed and removed for the latency figure (default 50)",
    )
    p.set_defaults(run=run)


# ---- the cluster ------------------------------------------------------------------------------


class Forbidden(Exception):
    """RBAC does not let these credentials read the object."""


class Unreachable(Exception):
    """The API server could not be asked."""


class _Api:
    """Read-only GETs of raw objects (dicts: no round trip through typed models)."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client

    def get(
        self, path: str, *, query: list[tuple[str, str]] | None = None
    ) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            response = self.client.call_api(
                path,
                "GET",
                query_params=query or [],
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=(5, 15),
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 403:
                raise Forbidden(path) from exc
            raise Unreachable(f"GET {path}: {exc.status} {exc.reason}") from exc
        except Exception as exc:  # urllib3 connection errors, timeouts
            raise Unreachable(f"GET {path}: {exc}") from exc
        data: dict[str, Any] = json.loads(response.data)
        return data

    def items(
        self, path: str, *, query: list[tuple[str, str]] | None = None
    ) -> list[dict[str, Any]]:
        found = self.get(path, query=query)
        return list((found or {}).get("items") or [])


def _client(kubeconfig: str | None, context: str | None) -> ApiClient:
    from webhook.cli.certs import _api_client

    return _api_client(kubeconfig, context)


def cluster_checks(
    api: _Api, args: argparse.Namespace, *, now: dt.datetime, results: list[Result]
) -> list[Result]:
    """Append the cluster checks to `results` (so a call that fails half-way keeps what it
    found; the caller reports the failure)."""
    ns = args.namespace

    def get(path: str) -> tuple[dict[str, Any] | None, bool]:
        """The object (None: absent) and whether we may read it."""
        try:
            return api.get(path), True
        except Forbidden:
            return None, False

    try:
        namespaces = api.items("/api/v1/namespaces")
        listed = True
    except Forbidden:
        namespaces, listed = [], False
    except Unreachable as exc:
        results.append(
            doctor._result(
                doctor.GROUP_WEBHOOK,
                "api-reachable",
                Status.FAIL,
                str(exc),
                "check the kubeconfig and context (kubectl cluster-info)",
            )
        )
        return results
    results.append(
        doctor._result(
            doctor.GROUP_WEBHOOK,
            "api-reachable",
            Status.OK if listed else Status.WARN,
            f"API server {api.client.configuration.host} answers"
            + ("" if listed else " (namespaces may not be listed: forbidden)"),
            "" if listed else "give these credentials list on namespaces",
        )
    )

    deployment, dep_ok = get(f"/apis/apps/v1/namespaces/{ns}/deployments/{args.deployment}")
    if dep_ok:
        results.append(doctor.check_deployment(deployment, namespace=ns, name=args.deployment))
    else:
        results.append(_forbidden("deployment-ready", f"Deployment {ns}/{args.deployment}"))

    secret_name = doctor.tls_secret_name(deployment, "kserve-cache-webhook-tls")
    secret, secret_ok = get(f"/api/v1/namespaces/{ns}/secrets/{secret_name}")
    results.append(
        doctor.check_certificate(
            secret,
            secret_ref=f"{ns}/{secret_name}",
            dns_name=f"{args.service}.{ns}.svc",
            now=now,
            warn_days=args.cert_warn_days,
            readable=secret_ok,
        )
    )
    cert = doctor.serving_certificate(secret)

    configs_path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
    try:
        configs = api.items(configs_path)
        configs_ok = True
    except Forbidden:
        configs, configs_ok = [], False
    ours = next(
        (c for c in configs if (c.get("metadata") or {}).get("name") == args.webhook_config), None
    )
    configmap, cm_ok = get(f"/api/v1/namespaces/{ns}/configmaps/{args.configmap}")
    if cm_ok:
        config_result, config = doctor.check_cluster_config(configmap, ref=f"{ns}/{args.configmap}")
    else:
        config_result = _forbidden("cluster-config", f"ConfigMap {ns}/{args.configmap}")
        config = None
    if configs_ok:
        results.append(doctor.check_ca_bundle(ours, cert, name=args.webhook_config))
        results.append(doctor.check_order(configs, ours, name=args.webhook_config))
        results.append(
            doctor.check_selectors(
                ours,
                service=args.service,
                namespace=ns,
                excluded=("kube-system",),
            )
        )
        results.append(doctor.check_kserve_mutator(configs, config=config))
    else:
        for name in ("ca-bundle", "webhook-order", "webhook-selectors", "kserve-pod-mutator"):
            results.append(_forbidden(name, "MutatingWebhookConfigurations"))
    results.append(config_result)
    if args.webhook_url:
        facts = probe_endpoint(
            args.webhook_url,
            ca_pem=doctor.ca_bundle_pem(ours),
            server_name=f"{args.service}.{ns}.svc",
        )
        results.append(doctor.check_endpoint(facts, cert))
    if dep_ok and deployment is not None:
        results.append(doctor.check_images(deployment, config))
    results.extend(_namespace_checks(api, args, namespaces=namespaces, config=config))
    return results


def probe_endpoint(
    url: str, *, ca_pem: bytes | None, server_name: str, timeout: float = 5.0
) -> doctor.EndpointFacts:
    """GET /readyz over TLS verified as the API server verifies it: against the caBundle, for
    the Service's DNS name (whatever host the URL names, e.g. a port-forward)."""
    import socket
    import ssl
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        return doctor.EndpointFacts(url, server_name, error="not an https:// URL")
    if not ca_pem:
        return doctor.EndpointFacts(
            url, server_name, error="no caBundle to verify the webhook with"
        )
    try:
        context = ssl.create_default_context(cadata=ca_pem.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as exc:
        return doctor.EndpointFacts(url, server_name, error=f"unreadable caBundle: {exc}")
    try:
        with (
            socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            served = tls.getpeercert(binary_form=True)
            tls.sendall(
                f"GET /readyz HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    except ssl.SSLCertVerificationError as exc:
        return doctor.EndpointFacts(url, server_name, error=f"TLS: {exc.verify_message}")
    except (OSError, ssl.SSLError) as exc:
        return doctor.EndpointFacts(url, server_name, error=str(exc))
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError):
        return doctor.EndpointFacts(url, server_name, error=f"not HTTP: {status_line!r}")
    return doctor.EndpointFacts(
        url,
        server_name,
        status=status,
        body=body.decode("utf-8", "replace"),
        served_cert_der=served,
    )


def _forbidden(name: str, what: str) -> Result:
    return doctor._result(
        doctor.GROUP_WEBHOOK,
        name,
        Status.WARN,
        f"cannot read {what} (forbidden): not checked",
        "run doctor with credentials that may read it (doctor only reads)",
    )


def _namespace_checks(
    api: _Api, args: argparse.Namespace, *, namespaces: list[dict[str, Any]], config: Any
) -> list[Result]:
    from webhook.clusterconfig import ClusterConfig

    config = config or ClusterConfig()
    if args.check_namespaces:
        by_name = {(n.get("metadata") or {}).get("name"): n for n in namespaces}
        pvc_of = {}
        for name in args.check_namespaces:
            notes = ((by_name.get(name) or {}).get("metadata") or {}).get("annotations") or {}
            pvc_of[name] = str(notes.get("cache.kserve.io/pvc") or config.pvc)
        targets = sorted(pvc_of.items())
    else:
        try:
            claims = api.items("/api/v1/persistentvolumeclaims")
        except Forbidden:
            claims = []
        try:
            predictors = api.items("/api/v1/pods", query=[("labelSelector", "component=predictor")])
        except Forbidden:
            predictors = []
        targets = doctor.opted_in_namespaces(
            namespaces, claims, config=config, predictors=predictors
        )
    if not targets:
        return [
            doctor._result(
                doctor.GROUP_NAMESPACES,
                "claim-exists",
                Status.WARN,
                "no namespace opts in yet (no cache.kserve.io annotation, no claim named "
                f"{config.pvc})",
                "annotate a Namespace or create its claim, or name it with --check-namespace",
            )
        ]
    from webhook.cli.share import doctor_results, doctor_separate_caches

    out: list[Result] = []
    volumes: dict[str, dict[str, Any]] = {}
    for ns, pvc in targets:
        try:
            claim = api.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{pvc}")
        except Forbidden:
            out.append(_forbidden("claim-exists", f"PersistentVolumeClaim {ns}/{pvc}"))
            continue
        out.extend(doctor.check_claim(claim, namespace=ns, name=pvc))
        if claim is None:
            continue
        volume_name = (claim.get("spec") or {}).get("volumeName")
        volume = driver = None
        readable = True
        try:
            if volume_name:
                volume = api.get(f"/api/v1/persistentvolumes/{volume_name}")
            csi = ((volume or {}).get("spec") or {}).get("csi") or {}
            if csi.get("driver"):
                driver = api.get(f"/apis/storage.k8s.io/v1/csidrivers/{csi['driver']}")
        except Forbidden:
            readable = False
        out.append(
            doctor.check_fs_group_policy(
                namespace=ns,
                claim_name=pvc,
                volume=volume,
                csi_driver=driver,
                fs_group=config.fsGroup,
                volume_readable=readable,
            )
        )
        if readable:  # issue 16: a shared claim is bound to the writer's volume, not a fresh one
            if volume is not None:
                volumes[f"{ns}/{pvc}"] = volume
            out.extend(
                doctor_results(
                    api.get, claim, volume, ref=f"{ns}/{pvc}", shared_claim=args.shared_claim
                )
            )
    return out + doctor_separate_caches(volumes)


# ---- a cache volume ---------------------------------------------------------------------------


def root_facts(root: Path) -> doctor.RootFacts:
    try:
        st = root.stat()
    except OSError:
        return doctor.RootFacts(path=str(root), exists=False)
    read_only = False
    with contextlib.suppress(OSError):
        read_only = bool(os.statvfs(root).f_flag & os.ST_RDONLY)
    return doctor.RootFacts(
        path=str(root),
        exists=True,
        is_dir=root.is_dir(),
        uid=st.st_uid,
        gid=st.st_gid,
        mode=st.st_mode,
        writable=os.access(root, os.W_OK | os.X_OK) and not read_only,
        read_only_fs=read_only,
        euid=os.geteuid(),
        groups=tuple(sorted({os.getegid(), *os.getgroups()})),
    )


def space_facts(root: Path) -> doctor.SpaceFacts:
    st = os.statvfs(root)
    return doctor.SpaceFacts(
        total_bytes=st.f_blocks * st.f_frsize,
        free_bytes=st.f_bavail * st.f_frsize,
        total_inodes=st.f_files,
        free_inodes=st.f_favail,
    )


@contextlib.contextmanager
def scratch(root: Path) -> Iterator[Path]:
    """`<root>/.doctor/<random>/`, removed afterwards (also on errors)."""
    folder = root / SCRATCH / secrets.token_hex(6)
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            (root / SCRATCH).rmdir()  # only when no other doctor run uses it


def _drop_cache(fd: int) -> None:
    with contextlib.suppress(AttributeError, OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def measure_speed(
    folder: Path, *, size: int, files: int, clock: Callable[[], float] = time.perf_counter
) -> doctor.SpeedFacts:
    """Write `size` bytes in 1 MiB blocks and fsync, read them back with the page cache dropped,
    then time create+fsync, stat, rename and unlink of `files` small files."""
    block = os.urandom(1024 * 1024)
    path = folder / "throughput"
    write_s = read_s = 0.0
    if size:
        start = clock()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            left = size
            while left > 0:
                left -= os.write(fd, block[: min(left, len(block))])
            os.fsync(fd)
            write_s = clock() - start
            _drop_cache(fd)
        finally:
            os.close(fd)
        start = clock()
        fd = os.open(path, os.O_RDONLY)
        try:
            _drop_cache(fd)
            while os.read(fd, len(block)):
                pass
        finally:
            os.close(fd)
        read_s = clock() - start
        path.unlink()
    per_op: list[float] = []
    for index in range(files):
        name = folder / f"m{index}"
        start = clock()
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"x")
        os.fsync(fd)
        os.close(fd)
        name.stat()
        moved = folder / f"r{index}"
        name.rename(moved)
        moved.unlink()
        per_op.append((clock() - start) / 4)
    return doctor.SpeedFacts(
        bytes=size,
        write_seconds=write_s,
        read_seconds=read_s,
        metadata_ops=files,
        metadata_seconds=statistics.median(per_op) if per_op else 0.0,
    )


def measure_reads(
    root: Path, *, limit: int, clock: Callable[[], float] = time.perf_counter
) -> tuple[int, float]:
    """Bytes read and seconds, from the largest published files, at most `limit` bytes."""
    from webhook.cache.layout import Layout, list_keys, read_manifest

    layout = Layout(root)
    done, seconds = 0, 0.0
    for key in list_keys(layout):
        manifest = read_manifest(layout, key)
        if manifest is None:
            continue
        for item in manifest.files:
            if done >= limit:
                return done, seconds
            path = layout.entry(key) / item.path
            start = clock()
            with contextlib.suppress(OSError), path.open("rb") as f:
                while chunk := f.read(min(1024 * 1024, limit - done)):
                    done += len(chunk)
                    if done >= limit:
                        break
            seconds += clock() - start
    return done, seconds


def volume_checks(args: argparse.Namespace) -> list[Result]:
    root: Path = args.cache_root
    results = []
    facts = root_facts(root)
    root_result = doctor.check_root(facts, read_only=args.read_only)
    if not facts.exists or not facts.is_dir:
        return [root_result]
    results.append(_probe(root, read_only=args.read_only, writable=facts.writable))
    results.append(root_result)
    results.extend(doctor.check_space(space_facts(root)))
    if args.read_only or not facts.writable:
        done, seconds = measure_reads(root, limit=args.bench_bytes)
        if done:
            mib = done / (1024 * 1024)
            rate = mib / seconds if seconds > 0 else float("inf")
            results.append(
                doctor._result(
                    doctor.GROUP_VOLUME,
                    "throughput",
                    Status.OK,
                    f"read {rate:.0f} MiB/s over {mib:.1f} MiB of cached files (page cache "
                    "not dropped: an upper bound); writes not measured",
                )
            )
        return results
    try:
        with scratch(root) as folder:
            speed = measure_speed(folder, size=args.bench_bytes, files=args.metadata_files)
    except OSError as exc:
        results.append(
            doctor._result(
                doctor.GROUP_VOLUME,
                "throughput",
                Status.FAIL,
                f"writing a test file under {root / SCRATCH} failed: {exc}",
                "a full or read-only volume fails fetch too (disk-full, cache-not-writable)",
            )
        )
        return results
    speed_results = doctor.check_speed(speed)
    if not args.bench_bytes:
        speed_results = [r for r in speed_results if r.name != "throughput"]
    results.extend(speed_results)
    return results


def _probe(root: Path, *, read_only: bool, writable: bool) -> Result:
    if read_only:
        return doctor._result(
            doctor.GROUP_VOLUME,
            "capability-probe",
            Status.OK,
            "read-only consumer: not probed here (the writer's fetch probes the volume)",
        )
    if not writable:
        return doctor.check_probe(None, error="the root is not writable here (root-permissions)")
    try:
        from webhook.cache import probe  # the netfs helper's module
    except ImportError:
        return doctor.check_probe(None, error="this version has no webhook.cache.probe")
    try:
        report = probe.probe_volume(root)
    except OSError as exc:
        return doctor.check_probe(None, error=str(exc))
    return doctor.check_probe(report)


# ---- output -----------------------------------------------------------------------------------


def render(report: Report) -> str:
    lines: list[str] = []
    group = None
    for r in report.results:
        if r.group != group:
            if group is not None:
                lines.append("")
            group = r.group
            lines += [group, "-" * len(group)]
        lines.append(f"{doctor.SYMBOLS[r.status]} {r.name}: {r.detail}")
        if r.status is not Status.OK:
            if r.hint:
                lines.append(f"    hint: {r.hint}")
            lines.append(f"    see: {r.docs}")
    counts = report.to_dict()["counts"]
    lines += [
        "",
        f"Status: {'✗ failed' if not report.ok else '✓ ok'} "
        f"({counts['ok']} ok, {counts['warn']} warnings, {counts['fail']} failed)",
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    results: list[Result] = []
    cluster = args.cache_root is None or args.kubeconfig is not None or args.context is not None
    if args.cache_root is not None:
        results.extend(volume_checks(args))
    if cluster:
        try:
            client = _client(args.kubeconfig, args.context)
        except Exception as exc:  # no kubeconfig, a broken one, no service account
            results.append(
                doctor._result(
                    doctor.GROUP_WEBHOOK,
                    "api-reachable",
                    Status.FAIL,
                    f"no usable kubeconfig: {exc}",
                    "pass --kubeconfig/--context, or --cache-root to check a volume only",
                )
            )
        else:
            try:
                cluster_checks(_Api(client), args, now=dt.datetime.now(dt.UTC), results=results)
            except Unreachable as exc:  # the API server went away half-way
                results.append(
                    doctor._result(
                        doctor.GROUP_WEBHOOK,
                        "api-reachable",
                        Status.FAIL,
                        f"stopped: {exc}",
                        "the checks above ran; retry when the API server answers",
                    )
                )
            finally:
                client.close()
                client.rest_client.pool_manager.clear()
    report = Report(tuple(results))
    if args.output == "json":
        sys.stdout.write(json.dumps(report.to_dict(), indent=1) + "\n")
    else:
        sys.stdout.write(render(report))
    return EXIT_OK if report.ok else EXIT_FAILED
