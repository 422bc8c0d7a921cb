"""Small helpers shared by the versions tests."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tests.cache.conftest import BUCKET, REGION, S3


def s3_client(s3: S3) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name=REGION,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
    )


def put_model(s3: S3, prefix: str, files: dict[str, bytes]) -> None:
    client = s3_client(s3)
    try:
        for name, body in files.items():
            client.put_object(Bucket=BUCKET, Key=f"{prefix}/{name}", Body=body)
    finally:
        client.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_sha(root: Path) -> dict[str, str]:
    """sha256 of every regular file under root (manifests excluded), by relative path."""
    return {
        p.relative_to(root).as_posix(): sha(p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".kserve-cache")
    }
