"""Certificates: SANs, key usages, chain verification, files, and the rotating caBundle."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from webhook import certs
from webhook.cli import main

SERVICE_NAMES = (
    "kserve-cache-webhook",
    "kserve-cache-webhook.kserve-cache",
    "kserve-cache-webhook.kserve-cache.svc",
    "kserve-cache-webhook.kserve-cache.svc.cluster.local",
)
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def cert_of(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def verify(
    leaf_pem: bytes, trusted_pem: bytes, host: str, *, at: dt.datetime | None = None
) -> None:
    """Verify `leaf_pem` for `host` with cryptography's verifier, trusting `trusted_pem`."""
    builder = PolicyBuilder().store(Store(certs.load_certificates(trusted_pem)))
    if at is not None:
        builder = builder.time(at)
    name: x509.GeneralName
    try:
        name = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        name = x509.DNSName(host)
    builder.build_server_verifier(name).verify(cert_of(leaf_pem), [])


def sans(pem: bytes) -> tuple[list[str], list[str]]:
    ext = cert_of(pem).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.DNSName), [
        str(ip) for ip in ext.get_values_for_type(x509.IPAddress)
    ]


@pytest.fixture(scope="module")
def ca() -> certs.KeyPair:
    return certs.generate_ca()


def test_ca_can_sign_and_nothing_else(ca: certs.KeyPair) -> None:
    cert = cert_of(ca.cert_pem)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert not usage.key_encipherment
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_serving_certificate(key_type: certs.KeyType) -> None:
    ca = certs.generate_ca(key_type=key_type)
    pair = certs.generate_serving_cert(
        ca, dns_names=SERVICE_NAMES, ip_addresses=("10.0.0.7",), key_type=key_type
    )
    cert = cert_of(pair.cert_pem)
    assert sans(pair.cert_pem) == (list(SERVICE_NAMES), ["10.0.0.7"])
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.key_encipherment is (key_type == "rsa")
    assert not usage.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    key = serialization.load_pem_private_key(pair.key_pem, password=None)
    if key_type == "ec":
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.curve.name == "secp256r1"
    else:
        assert isinstance(key, rsa.RSAPrivateKey)
        assert key.key_size == 2048
    for host in (*SERVICE_NAMES, "10.0.0.7"):
        verify(pair.cert_pem, ca.cert_pem, host)


def test_chain_verification_fails_for_other_names_and_other_cas(ca: certs.KeyPair) -> None:
    pair = certs.generate_serving_cert(ca, dns_names=SERVICE_NAMES)
    with pytest.raises(VerificationError):
        verify(pair.cert_pem, ca.cert_pem, "kserve-cache-webhook.default.svc")
    with pytest.raises(VerificationError):
        verify(pair.cert_pem, certs.generate_ca().cert_pem, SERVICE_NAMES[2])


def test_validity_follows_days_and_never_outlives_the_ca() -> None:
    ca = certs.generate_ca(days=30, now=T0)
    short = cert_of(certs.generate_serving_cert(ca, dns_names=["a"], days=7, now=T0).cert_pem)
    assert short.not_valid_after_utc == T0 + dt.timedelta(days=7)
    assert short.not_valid_before_utc < T0  # back-dated for clock skew
    long = cert_of(certs.generate_serving_cert(ca, dns_names=["a"], days=365, now=T0).cert_pem)
    assert long.not_valid_after_utc == cert_of(ca.cert_pem).not_valid_after_utc


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"dns_names": []}, "at least one", id="no-names"),
        pytest.param({"dns_names": ["a"], "ip_addresses": ["10.0.0.300"]}, "IP", id="bad-ip"),
        pytest.param({"dns_names": ["a"], "days": 0}, "between 1 and 3650", id="zero-days"),
    ],
)
def test_bad_input_is_a_clear_error(
    ca: certs.KeyPair, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(certs.CertError, match=message):
        certs.generate_serving_cert(ca, **kwargs)  # type: ignore[arg-type]


def test_a_key_that_does_not_match_is_refused(ca: certs.KeyPair) -> None:
    other = certs.generate_ca()
    with pytest.raises(certs.CertError, match="does not match"):
        certs.generate_serving_cert(
            certs.KeyPair(cert_pem=ca.cert_pem, key_pem=other.key_pem), dns_names=["a"]
        )


def test_write_self_signed(tmp_path: Path) -> None:
    files = certs.write_self_signed(tmp_path / "dev", hosts=("localhost", "127.0.0.1", "::1"))
    assert files == certs.CertFiles(
        ca_file=tmp_path / "dev" / "ca.crt",
        cert_file=tmp_path / "dev" / "tls.crt",
        key_file=tmp_path / "dev" / "tls.key",
    )
    assert stat.S_IMODE(files.key_file.stat().st_mode) == 0o600
    assert sans(files.cert_file.read_bytes()) == (["localhost"], ["127.0.0.1", "::1"])
    for host in ("localhost", "127.0.0.1", "::1"):
        verify(files.cert_file.read_bytes(), files.ca_file.read_bytes(), host)
    assert sorted(p.name for p in (tmp_path / "dev").iterdir()) == ["ca.crt", "tls.crt", "tls.key"]


# --- the rotating bundle (pure, at chosen times) ---


def _ca_at(when: dt.datetime, *, days: int = 365) -> bytes:
    return certs.generate_ca(days=days, now=when).cert_pem


def _count(bundle: bytes) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.PEM) for c in certs.load_certificates(bundle)]


def test_bundle_keeps_previous_cas_until_they_expire() -> None:
    ca1, ca2, ca3 = (
        _ca_at(T0),
        _ca_at(T0 + dt.timedelta(days=100)),
        _ca_at(T0 + dt.timedelta(days=200)),
    )
    bundle2 = certs.build_ca_bundle(ca2, previous_pem=ca1, now=T0 + dt.timedelta(days=100))
    assert _count(bundle2) == [ca2, ca1]
    bundle3 = certs.build_ca_bundle(ca3, previous_pem=bundle2, now=T0 + dt.timedelta(days=200))
    assert _count(bundle3) == [ca3, ca2, ca1]
    # ca1 expires after 365 days; the next rotation drops it.
    ca4 = _ca_at(T0 + dt.timedelta(days=400))
    bundle4 = certs.build_ca_bundle(ca4, previous_pem=bundle3, now=T0 + dt.timedelta(days=400))
    assert _count(bundle4) == [ca4, ca3, ca2]


@pytest.mark.parametrize(
    ("overlap_days", "expected"),
    [
        pytest.param(0, ["ca3"], id="zero-keeps-none"),
        pytest.param(50, ["ca3", "ca2"], id="only-the-ca-retired-now"),
        pytest.param(150, ["ca3", "ca2", "ca1"], id="both-within-overlap"),
        pytest.param(None, ["ca3", "ca2", "ca1"], id="until-expiry"),
    ],
)
def test_bundle_overlap_counts_from_retirement(
    overlap_days: int | None, expected: list[str]
) -> None:
    # ca1 retired at day 100 (when ca2 was issued); ca2 is retired now, at day 200.
    cas = {
        "ca1": _ca_at(T0),
        "ca2": _ca_at(T0 + dt.timedelta(days=100)),
        "ca3": _ca_at(T0 + dt.timedelta(days=200)),
    }
    overlap = None if overlap_days is None else dt.timedelta(days=overlap_days)
    bundle = certs.build_ca_bundle(
        cas["ca3"],
        previous_pem=cas["ca1"] + cas["ca2"],  # any order in: newest first out
        now=T0 + dt.timedelta(days=200),
        overlap=overlap,
    )
    assert _count(bundle) == [cas[name] for name in expected]


def test_bundle_drops_duplicates_and_rejects_garbage() -> None:
    ca1 = _ca_at(T0)
    assert _count(certs.build_ca_bundle(ca1, previous_pem=ca1 + ca1, now=T0)) == [ca1]
    with pytest.raises(certs.CertError):
        certs.build_ca_bundle(ca1, previous_pem=b"-----BEGIN CERTIFICATE-----\nnope\n", now=T0)


# --- the `certs` command ---


def run_certs(tmp: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["certs", "--out-dir", str(tmp), *args])
    return code, capsys.readouterr().out


def test_certs_command_writes_and_prints_the_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, printed = run_certs(out, "--days", "30", capsys=capsys)
    assert code == 0
    bundle = (out / "ca.crt").read_bytes()
    assert base64.b64decode(printed.strip(), validate=True) == bundle
    leaf = (out / "tls.crt").read_bytes()
    assert sans(leaf) == (list(SERVICE_NAMES), [])
    for host in SERVICE_NAMES:
        verify(leaf, bundle, host)
    lifetime = cert_of(leaf).not_valid_after_utc - cert_of(leaf).not_valid_before_utc
    assert lifetime == dt.timedelta(days=30) + certs.CLOCK_SKEW
    assert stat.S_IMODE((out / "tls.key").stat().st_mode) == 0o600
    # The CA key is never written.
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]


def test_certs_command_names_follow_service_and_namespace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run_certs(
        tmp_path, "--service", "hook", "--namespace", "ops", "--key-type", "rsa", capsys=capsys
    )
    assert code == 0
    assert sans((tmp_path / "tls.crt").read_bytes())[0] == [
        "hook",
        "hook.ops",
        "hook.ops.svc",
        "hook.ops.svc.cluster.local",
    ]


def test_rotation_keeps_the_previous_ca_for_the_overlap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_certs(tmp_path, capsys=capsys)[0] == 0
    old_leaf = (tmp_path / "tls.crt").read_bytes()
    old_ca = (tmp_path / "ca.crt").read_bytes()

    assert run_certs(tmp_path, capsys=capsys)[0] == 0
    new_leaf = (tmp_path / "tls.crt").read_bytes()
    bundle = (tmp_path / "ca.crt").read_bytes()
    assert _count(bundle)[1:] == _count(old_ca)
    # The serving certificate is signed by the first CA of the bundle.
    new_ca = certs.load_certificates(bundle)[0]
    cert_of(new_leaf).verify_directly_issued_by(new_ca)
    # Old and new replicas are both trusted during the rollout.
    verify(old_leaf, bundle, SERVICE_NAMES[2])
    verify(new_leaf, bundle, SERVICE_NAMES[2])
    with pytest.raises(VerificationError):
        verify(new_leaf, old_ca, SERVICE_NAMES[2])

    assert run_certs(tmp_path, "--overlap-days", "0", capsys=capsys)[0] == 0
    final = (tmp_path / "ca.crt").read_bytes()
    assert len(_count(final)) == 1
    with pytest.raises(VerificationError):
        verify(new_leaf, final, SERVICE_NAMES[2])


@pytest.mark.parametrize(
    ("args", "prepare"),
    [
        pytest.param(["--days", "0"], None, id="zero-days"),
        pytest.param(["--overlap-days", "-1"], None, id="negative-overlap"),
        pytest.param([], b"not a certificate", id="corrupt-previous-bundle"),
    ],
)
def test_certs_command_bad_input_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], prepare: bytes | None
) -> None:
    if prepare is not None:
        (tmp_path / "ca.crt").write_bytes(prepare)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code, printed = run_certs(tmp_path, *args, capsys=capsys)
    assert code == 2
    assert printed == ""
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
