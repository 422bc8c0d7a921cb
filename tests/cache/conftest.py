"""Fixtures: a moto S3 server process (with IAM auth on), a counting HTTP server, a cache root,
and a runner for real `kserve-cache fetch` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from webhook.cache.layout import Layout
from webhook.keys import cache_key

from .servers import FileServer

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / ".venv" / "bin" / "kserve-cache"
SERVERS = Path(__file__).with_name("servers.py")
BUCKET = "models"
REGION = "us-east-1"


@dataclass
class S3:
    endpoint: str
    access_key: str
    secret_key: str
    objects: dict[str, bytes] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        env.update(
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_ACCESS_KEY_ID=self.access_key,
            AWS_SECRET_ACCESS_KEY=self.secret_key,
            AWS_DEFAULT_REGION=REGION,
            AWS_EC2_METADATA_DISABLED="true",
            S3_MAX_ATTEMPTS="1",
        )
        env.update(extra)
        return env

    def counts(self) -> dict[str, int]:
        data: dict[str, int] = httpx.get(f"{self.endpoint}/_counts", timeout=10).json()
        return data

    def reset_counts(self) -> None:
        httpx.delete(f"{self.endpoint}/_counts", timeout=10).raise_for_status()


# The S3 model "llama": several files under a prefix, one in a sub-folder.
S3_MODEL = {
    "llama/config.json": b'{"arch": "tiny"}\n',
    "llama/weights/part-0.bin": os.urandom(700_000),
    "llama/weights/part-1.bin": os.urandom(300_001),
}


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    """moto in server mode on 127.0.0.1, in its own process; auth is switched on after setup."""
    import boto3

    proc = subprocess.Popen(
        [sys.executable, str(SERVERS), "s3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "AWS_DEFAULT_REGION": REGION},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("PORT "), line
        endpoint = f"http://127.0.0.1:{int(line.split()[1])}"
        common: dict[str, Any] = {
            "endpoint_url": endpoint,
            "region_name": REGION,
            "aws_access_key_id": "setup",
            "aws_secret_access_key": "setup",
        }
        iam = boto3.client("iam", **common)
        iam.create_user(UserName="fetcher")
        iam.put_user_policy(
            UserName="fetcher",
            PolicyName="s3",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName="fetcher")["AccessKey"]
        iam.close()
        client = boto3.client("s3", **common)
        client.create_bucket(Bucket=BUCKET)
        for name, body in S3_MODEL.items():
            client.put_object(Bucket=BUCKET, Key=name, Body=body)
        client.close()
        # From now on every request must be signed with the fetcher's key.
        httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"0", timeout=10).raise_for_status()
        yield S3(endpoint, key["AccessKeyId"], key["SecretAccessKey"], dict(S3_MODEL))
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(scope="session")
def http_server() -> Iterator[FileServer]:
    server = FileServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    root = tmp_path / "cache"
    root.mkdir()
    return Layout(root)


@dataclass(frozen=True)
class Run:
    code: int
    result: dict[str, Any]
    stderr: str
    termination: str


def fetch_args(
    uri: str, root: Path, *, revision: str = "", key: str | None = None, extra: tuple[str, ...] = ()
) -> list[str]:
    args = [str(CLI), "fetch", "--uri", uri, "--cache-root", str(root)]
    args += ["--key", key if key is not None else cache_key(uri, revision)]
    if revision:
        args += ["--revision", revision]
    return [*args, *extra]


def run_fetch(
    uri: str,
    root: Path,
    *,
    env: Mapping[str, str] | None = None,
    revision: str = "",
    key: str | None = None,
    extra: tuple[str, ...] = (),
    timeout: float = 60,
) -> Run:
    """Run one real `kserve-cache fetch` process and parse its JSON result line."""
    term = root.parent / f"termination-{os.urandom(4).hex()}.log"
    args = fetch_args(uri, root, revision=revision, key=key, extra=extra)
    proc = subprocess.run(
        [*args, "--termination-log", str(term)],
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else None,
        timeout=timeout,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, (proc.stdout, proc.stderr)
    termination = term.read_text(encoding="utf-8") if term.exists() else ""
    return Run(proc.returncode, json.loads(lines[0]), proc.stderr, termination)


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under root, by relative path, with its bytes."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }
