"""Webhook certificates: a CA, a serving certificate signed by it, and the rotating caBundle.

Generation and bundle functions are pure (bytes in, bytes out); `write_self_signed` and
`write_pem_files` are the only functions here that touch the file system.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

KeyType = Literal["ec", "rsa"]

# Back-date notBefore a little: nodes and API servers with a slightly slow clock would
# otherwise reject a certificate made seconds ago.
CLOCK_SKEW: Final = dt.timedelta(minutes=5)
CA_FILE: Final = "ca.crt"
CERT_FILE: Final = "tls.crt"
KEY_FILE: Final = "tls.key"


class CertError(ValueError):
    """Certificate material that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM (PKCS#8, unencrypted) private key."""

    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class CertFiles:
    """Where the CA certificate, the serving certificate and its key were written."""

    ca_file: Path
    cert_file: Path
    key_file: Path


_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _new_key(key_type: KeyType) -> _PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise CertError(f"unknown key type {key_type!r}; use 'ec' or 'rsa'")


def _key_pem(key: _PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.UTC)


def _check_days(days: int) -> None:
    if not 1 <= days <= 3650:
        raise CertError(f"validity must be between 1 and 3650 days, got {days}")


def generate_ca(
    *,
    common_name: str = "kserve-cache-ca",
    days: int = 365,
    key_type: KeyType = "ec",
    now: dt.datetime | None = None,
) -> KeyPair:
    """A self-signed CA allowed to sign serving certificates (pathLen 0)."""
    _check_days(days)
    start = _now(now)
    key = _new_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_key_pem(key))


def split_hosts(hosts: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split host names from IP addresses: (dns_names, ip_addresses), order kept."""
    dns: list[str] = []
    ips: list[str] = []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            dns.append(host)
        else:
            ips.append(host)
    return tuple(dns), tuple(ips)


def service_dns_names(service: str, *, namespace: str) -> tuple[str, ...]:
    """The names a Service is reached by inside a cluster, shortest first."""
    return (
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    )


def load_key_pair(pair: KeyPair) -> tuple[x509.Certificate, _PrivateKey]:
    """Parse a key pair, checking that the key belongs to the certificate."""
    try:
        cert = x509.load_pem_x509_certificate(pair.cert_pem)
        key = serialization.load_pem_private_key(pair.key_pem, password=None)
    except ValueError as exc:
        raise CertError(f"cannot read the certificate or key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertError(f"unsupported key type {type(key).__name__}; use EC or RSA")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    if key.public_key().public_bytes(pem, spki) != cert.public_key().public_bytes(pem, spki):
        raise CertError("the private key does not match the certificate")
    return cert, key


def generate_serving_cert(
    ca: KeyPair,
    *,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str] = (),
    days: int = 365,
    key_type: KeyType = "ec",
    now: dt.datetime | None = None,
) -> KeyPair:
    """A TLS server certificate for the given names, signed by `ca`."""
    _check_days(days)
    if not dns_names and not ip_addresses:
        raise CertError("a serving certificate needs at least one DNS name or IP address")
    try:
        ips = [ipaddress.ip_address(ip) for ip in ip_addresses]
    except ValueError as exc:
        raise CertError(str(exc)) from exc
    ca_cert, ca_key = load_key_pair(ca)
    start = _now(now)
    not_after = min(start + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    key = _new_key(key_type)
    common_name = dns_names[0] if dns_names else str(ips[0])
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ip) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        # CN is capped at 64 characters by RFC 5280; clients match the SANs anyway.
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                # RSA key exchange encrypts with the certificate key; EC keys never do.
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_key_pem(key))


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, in order; an empty bundle is an error."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise CertError(f"not a PEM certificate bundle: {exc}") from exc
    return certs


def build_ca_bundle(
    new_ca_pem: bytes,
    *,
    previous_pem: bytes = b"",
    now: dt.datetime | None = None,
    overlap: dt.timedelta | None = None,
) -> bytes:
    """The caBundle after a rotation: the new CA first, then the previous CAs still trusted.

    A previous CA is kept while it is unexpired and, when `overlap` is given, while less than
    `overlap` has passed since it was retired: the newest previous CA is retired now, an
    older one when its successor was issued. `overlap=None` keeps each until it expires;
    a zero overlap keeps none. Duplicates are dropped; the order is newest first.
    """
    current = _now(now)
    new_certs = load_certificates(new_ca_pem)
    seen = {c.fingerprint(hashes.SHA256()) for c in new_certs}
    previous = load_certificates(previous_pem) if previous_pem.strip() else []
    previous.sort(key=lambda c: c.not_valid_before_utc, reverse=True)
    kept = list(new_certs)
    retired_at = current
    for cert in previous:
        fingerprint = cert.fingerprint(hashes.SHA256())
        subject = cert.subject.rfc4514_string()
        if fingerprint in seen:
            continue
        seen.add(fingerprint)
        if cert.not_valid_after_utc <= current:
            logger.info("dropping expired CA %s from the bundle", subject)
        elif overlap is not None and retired_at + overlap <= current:
            logger.info("dropping CA %s: retired more than %s ago", subject, overlap)
        else:
            kept.append(cert)
        # Its successor was issued when this one started (less the back-dating).
        retired_at = cert.not_valid_before_utc + CLOCK_SKEW
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in kept)


def _write(path: Path, data: bytes, *, mode: int) -> None:
    # Write beside the target, then rename: a reader never sees half a file, and the key
    # file is never world-readable, not even for a moment.
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def write_pem_files(directory: Path, *, ca_bundle_pem: bytes, serving: KeyPair) -> CertFiles:
    """Write ca.crt (the bundle), tls.crt and tls.key (mode 0600) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    files = CertFiles(
        ca_file=directory / CA_FILE,
        cert_file=directory / CERT_FILE,
        key_file=directory / KEY_FILE,
    )
    _write(files.key_file, serving.key_pem, mode=0o600)
    _write(files.cert_file, serving.cert_pem, mode=0o644)
    _write(files.ca_file, ca_bundle_pem, mode=0o644)
    return files


def write_self_signed(
    directory: Path, *, hosts: Sequence[str] = ("localhost", "127.0.0.1")
) -> CertFiles:
    """A throwaway CA and serving certificate for `hosts` (IPs become IP SANs), on disk."""
    dns_names, ip_addresses = split_hosts(hosts)
    ca = generate_ca()
    serving = generate_serving_cert(ca, dns_names=dns_names, ip_addresses=ip_addresses)
    files = write_pem_files(directory, ca_bundle_pem=ca.cert_pem, serving=serving)
    logger.info("wrote a self-signed certificate for %s in %s", ", ".join(hosts), directory)
    return files
