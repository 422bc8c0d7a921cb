"""Parity: for every golden case, `preview -o patch` is the patch a real `kserve-cache serve`
answers on /mutate (over TLS, same config, the Namespace served by a Kubernetes API stand-in),
and `preview --webhook-url` against that server shows the same. Plus a few end-to-end runs of
the installed command."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import Server, kserve_cache_exe, start_server, stop_server
from tests.fakekube import FakeKube
from tests.golden_cases import Case, load_cases, make_review
from tests.preview.conftest import DATA, write

CASES = load_cases()
CONFIGS = sorted({c.config_text or "" for c in CASES})


def namespace_of(case: Case) -> str:
    # one API stand-in serves every case: cases with their own Namespace annotations get a
    # Namespace of their own (the same name in preview and in the server)
    return f"golden-{case.name[:2]}" if case.namespace_annotations is not None else case.namespace


def cache_claim(case: Case) -> str | None:
    """The claim the case's pod is cached on, from its expected result."""
    expected = json.loads(case.expected_file.read_text())
    annotations = ((expected.get("pod") or {}).get("metadata") or {}).get("annotations") or {}
    status = annotations.get("cache.kserve.io/status")
    return json.loads(status)["pvc"] if status else None


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """A running webhook per distinct golden config, all watching one API stand-in."""
    tmp = tmp_path_factory.mktemp("parity")
    started: dict[str, Server] = {}
    with FakeKube() as kube:
        claims: set[tuple[str, str]] = set()
        for case in CASES:
            if case.namespace_annotations is not None:
                kube.add_namespace(namespace_of(case), annotations=case.namespace_annotations)
            # the server checks that the cache claim exists; offline preview cannot, so the
            # claims are there (test_cluster.py covers preview's own check with --cluster)
            claim = cache_claim(case)
            if claim and (namespace_of(case), claim) not in claims:
                claims.add((namespace_of(case), claim))
                kube.add_claim(namespace_of(case), claim)
        kubeconfig = kube.write_kubeconfig(tmp / "kubeconfig")
        try:
            for number, text in enumerate(CONFIGS):
                folder = tmp / f"server-{number}"
                folder.mkdir()
                config = folder / "config.yaml"
                config.write_text(text)
                started[text] = start_server(
                    folder, "--config", str(config), "--kubeconfig", str(kubeconfig)
                )
            kube.add_claim("models", "kserve-model-cache")
            yield started
        finally:
            for server in started.values():
                stop_server(server)


def client_for(server: Server) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(server.ca_file))
    return httpx.Client(base_url=server.url, verify=context, timeout=10)


def served_patch(server: Server, case: Case) -> tuple[list[Any], dict[str, Any]]:
    body = make_review(case.pod, namespace=namespace_of(case), uid=f"parity-{case.name}")
    with client_for(server) as client:
        answer = client.post("/mutate", json=body)
    assert answer.status_code == 200, answer.text
    response: dict[str, Any] = answer.json()["response"]
    raw = response.get("patch")
    return (json.loads(base64.b64decode(raw)) if raw else []), response


def case_args(case: Case, tmp: Path) -> list[str]:
    source = tmp / "input.json"
    source.write_text(json.dumps(case.pod))
    return ["-f", str(source), "--no-kserve", "-n", namespace_of(case)]


def local_args(case: Case, tmp: Path) -> list[str]:
    args = case_args(case, tmp)
    if case.config_text is not None:
        config = tmp / "config.yaml"
        config.write_text(case.config_text)
        args += ["--config", str(config)]
    for key, value in (case.namespace_annotations or {}).items():
        args += ["--namespace-annotation", f"{key}={value}"]
    return args


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_preview_patch_equals_the_served_patch(
    case: Case, servers: dict[str, Server], preview: Any, tmp_path: Path
) -> None:
    server = servers[case.config_text or ""]
    expected, response = served_patch(server, case)

    local = preview(*local_args(case, tmp_path))
    assert local.code == 0, local.err
    assert local.json() == expected

    remote = preview(
        *case_args(case, tmp_path),
        "--webhook-url", server.url, "--cacert", str(server.ca_file),
    )  # fmt: skip
    assert remote.code == 0, remote.err
    assert remote.json() == expected

    reason = response.get("auditAnnotations", {}).get("skip-reason")
    for run in (local, remote):
        if reason:
            assert f"skipped: {reason}" in run.err
        else:
            assert ": mutated" in run.err or ": unchanged" in run.err
        for warning in response.get("warnings", []):
            assert warning in run.err


def test_webhook_url_explains_from_the_status_annotation(
    servers: dict[str, Server], preview: Any, tmp_path: Path
) -> None:
    server = servers[""]
    source = DATA / "sklearn-iris.yaml"
    run = preview(
        "-f", str(source), "--explain", "-o", "yaml",
        "--webhook-url", server.url + "/", "--cacert", str(server.ca_file),
    )  # fmt: skip
    assert run.code == 0, run.err
    assert f"answered   by {server.url}/mutate" in run.err
    assert "outcome    mutated" in run.err
    # no policy object comes back: the rows are read from the status annotation
    rows = [line.split() for line in run.err.splitlines() if line.startswith("  ")]
    assert ["pvc", "kserve-model-cache", "built-in"] in rows
    assert ["serving-mode", "mount", "built-in"] in rows
    assert ["revision", "v1", "pod"] in rows
    assert ["enabled", "true", "pod"] in rows
    assert ["policy", "opt-in", "built-in"] in rows
    setting_rows = rows[rows.index(["setting", "value", "layer"]) + 1 :]
    setting_rows = [r for r in setting_rows if r[0] != "warning"]
    assert setting_rows
    assert all(r[1] != "-" for r in setting_rows), setting_rows
    (pod,) = run.yaml()
    status = json.loads(pod["metadata"]["annotations"]["cache.kserve.io/status"])
    assert status["revision"] == "v1"
    local = preview("-f", str(source), "-o", "yaml")
    assert local.yaml() == [pod], "the running webhook and the local core agree"


def test_webhook_url_failures(servers: dict[str, Server], preview: Any, tmp_path: Path) -> None:
    server = servers[""]
    source = DATA / "sklearn-iris.yaml"
    other_ca = tmp_path / "other"
    # a CA that did not sign the server's certificate
    from webhook.certs import write_self_signed

    files = write_self_signed(other_ca, hosts=["localhost"])
    untrusted = preview(
        "-f", str(source), "--webhook-url", server.url, "--cacert", str(files.ca_file)
    )  # fmt: skip
    assert untrusted.code == 1
    assert "cannot reach the webhook" in untrusted.err
    assert untrusted.out == ""

    with client_for(server) as client:
        assert client.get("/healthz").status_code == 200
    wrong_path = preview(
        "-f", str(source), "--webhook-url", server.url + "/healthz",
        "--cacert", str(server.ca_file),
    )  # fmt: skip
    assert wrong_path.code == 1
    assert "answered HTTP 405" in wrong_path.err


# end to end: the installed command ------------------------------------------------------------


def command(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*kserve_cache_exe(), "preview", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_command_reads_stdin_and_writes_yaml(tmp_path: Path) -> None:
    done = command("-f", "-", "-o", "yaml", stdin=(DATA / "sklearn-iris.yaml").read_text())
    assert done.returncode == 0, done.stderr
    (pod,) = yaml.safe_load_all(done.stdout)
    assert pod["kind"] == "Pod"
    assert pod["spec"]["initContainers"][0]["command"] == ["kserve-cache"]
    assert "document 1 (InferenceService models/sklearn-iris): mutated" in done.stderr


def test_command_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {}\n")
    done = command("-f", str(bad))
    assert done.returncode == 2
    assert "document 1 (Pod p): spec.containers" in done.stderr
    assert done.stdout == ""

    skipped = command("-f", str(DATA / "sklearn-iris.yaml"), "--no-kserve", "--fail-on-skip")
    assert skipped.returncode == 3
    assert "skipped: awaiting-kserve" in skipped.stderr
    assert json.loads(skipped.stdout) == []


def test_command_diff_of_a_deployment(tmp_path: Path) -> None:
    deployment = json.loads((DATA / "kserve-06-raw-deployment.json").read_text())
    source = write(tmp_path / "deploy.yaml", deployment)
    done = command(
        "-f", str(source), "-o", "diff",
        "--namespace-annotation", "cache.kserve.io/policy=default-on",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("--- a/Deployment/default/raw-foo-customized-predictor")
    assert "+        - kserve-cache\n" in done.stdout  # the command of our init container
    assert "\x1b[" not in done.stdout, "no colour when stdout is not a terminal"
