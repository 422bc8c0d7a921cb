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


def write_version(root: Path, key: str, files: dict[str, bytes], *, uri: str = "s3://m/x") -> Path:
    """A sealed version folder under versions/<key>/, as fetch writes it, with its ref."""
    import json
    import time

    from webhook.cache.integrity import FileDigest, manifest_digest
    from webhook.cache.layout import Layout
    from webhook.cache.refs import install_version, swap_ref, version_id

    rows = [FileDigest(n, len(b), sha(b)) for n, b in sorted(files.items())]
    digest = manifest_digest(rows)
    staging = root / ".staging" / f"{key}.{digest[7:19]}"
    for name, body in files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(body)
    manifest = {
        "uri": uri,
        "revision": "",
        "key": key,
        "files": [{"path": r.path, "size": r.size, "sha256": r.sha256} for r in rows],
        "bytes": sum(r.size for r in rows),
        "created_at": time.time(),
        "download_seconds": 0.0,
        "version": 1,
        "digest": digest,
    }
    (staging / ".kserve-cache.json").write_text(json.dumps(manifest), encoding="utf-8")
    layout = Layout(root)
    vid = version_id(digest)
    path, _ = install_version(layout, key, staging, vid)
    swap_ref(layout, key, vid)
    return path
