"""Serving TLS: TLS 1.2+ and hot reload of the certificate files (an edge: files).

uvicorn loads its certificate once. OpenSSL lets a live SSLContext take a new certificate:
`load_cert_chain` on the same context makes every later handshake use the new files, so a
rotated Secret is served without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path

logger = logging.getLogger(__name__)


def harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _identity(*paths: Path) -> tuple[tuple[int, int, int], ...] | None:
    try:
        return tuple(
            (st.st_ino, st.st_size, st.st_mtime_ns)
            for st in (os.stat(p) for p in paths)  # noqa: PTH116 - follows Secret symlinks
        )
    except OSError:
        return None


class CertReloader:
    """Reloads `cert_file`/`key_file` into `context` when either changes."""

    def __init__(self, context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
        self.context = context
        self.cert_file = cert_file
        self.key_file = key_file
        self.reloads = 0
        self.failures = 0
        self._identity = _identity(cert_file, key_file)

    def check(self) -> bool | None:
        """True: reloaded; False: the new files are unusable (old ones kept); None: unchanged."""
        identity = _identity(self.cert_file, self.key_file)
        if identity is None or identity == self._identity:
            return None
        try:
            self.context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            # A half-written pair (cert swapped before key): retry on the next tick.
            self.failures += 1
            logger.warning("serving certificate not reloaded yet: %s", exc)
            return False
        self._identity = identity
        self.reloads += 1
        logger.info("serving certificate reloaded from %s", self.cert_file)
        return True

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.check()


EXPIRY_METRIC = "kserve_cache_serving_certificate_expiry_timestamp_seconds"


class CertificateExpiry:
    """A Prometheus collector: when the certificate in `cert_file` expires (its notAfter, Unix
    time), re-read whenever the file changes, so a rotated Secret shows at the next scrape."""

    def __init__(self, cert_file: Path) -> None:
        self.cert_file = cert_file
        self._identity: tuple[tuple[int, int, int], ...] | None = None
        self._expiry: float | None = None

    def _read(self) -> float | None:
        identity = _identity(self.cert_file)
        if identity != self._identity:
            self._identity = identity
            try:
                from cryptography import x509

                cert = x509.load_pem_x509_certificates(self.cert_file.read_bytes())[0]
                self._expiry = cert.not_valid_after_utc.timestamp()
            except (OSError, ValueError, IndexError) as exc:
                logger.warning("cannot read the expiry of %s: %s", self.cert_file, exc)
                self._expiry = None
        return self._expiry

    def describe(self) -> list[object]:
        from prometheus_client.core import GaugeMetricFamily

        return [GaugeMetricFamily(EXPIRY_METRIC, "notAfter of the serving certificate")]

    def collect(self) -> list[object]:
        from prometheus_client.core import GaugeMetricFamily

        expiry = self._read()
        if expiry is None:
            return []
        return [
            GaugeMetricFamily(
                EXPIRY_METRIC,
                "When the serving certificate expires (notAfter, Unix time)",
                value=expiry,
            )
        ]
