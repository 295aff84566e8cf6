"""Tests for conec_actors.certs: generation, verification with aioquic, files."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
import sys
from pathlib import Path

import pytest
from aioquic.tls import AlertBadCertificate, verify_certificate
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conec_actors.certs import CertKey, cert_names, issue, load_pem, new_ca, self_signed

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


def _cert(ck: CertKey) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ck.cert_pem)


def _ext(
    cert: x509.Certificate, cls: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(cls)


def _check_key(ck: CertKey) -> None:
    """The key is unencrypted PKCS#8 P-256 and matches the certificate."""
    assert ck.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(ck.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert key.public_key() == _cert(ck).public_key()


def _check_validity(cert: x509.Certificate, lifetime: datetime.timedelta) -> None:
    now = datetime.datetime.now(datetime.UTC)
    skew = datetime.timedelta(minutes=5)
    start = cert.not_valid_before_utc
    assert now - datetime.timedelta(hours=1) - skew <= start <= now - datetime.timedelta(hours=1)
    assert now + lifetime - skew <= cert.not_valid_after_utc <= now + lifetime


# --- self_signed -------------------------------------------------------------


def test_self_signed_round_trip() -> None:
    ck = self_signed(["example.test", "127.0.0.1", "::1"])
    cert = _cert(ck)
    _check_key(ck)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "example.test"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    _check_validity(cert, datetime.timedelta(days=825))

    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical
    assert isinstance(bc.value, x509.BasicConstraints) and not bc.value.ca

    ku = _ext(cert, x509.KeyUsage).value
    assert isinstance(ku, x509.KeyUsage) and ku.digital_signature
    # RFC 5280: keyCertSign only with cA=true; aioquic does not need it.
    assert not ku.key_cert_sign

    assert cert_names(ck.cert_pem) == ["example.test", "127.0.0.1", "::1"]


def test_sans_dns_and_ip() -> None:
    ck = self_signed(["localhost", "10.1.2.3", "fe80::1", "*.svc.test"])
    san = _ext(_cert(ck), x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "*.svc.test"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("fe80::1"),
    ]
    assert cert_names(ck.cert_pem) == ["localhost", "10.1.2.3", "fe80::1", "*.svc.test"]


def test_ip_common_name() -> None:
    cert = _cert(self_signed(["192.0.2.7"]))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "192.0.2.7"
    assert cert_names(cert.public_bytes(serialization.Encoding.PEM)) == ["192.0.2.7"]


def test_self_signed_verifies_against_itself() -> None:
    ck = self_signed(["localhost", "127.0.0.1"])
    cert = _cert(ck)
    verify_certificate(certificate=cert, chain=[], server_name="localhost", cadata=ck.cert_pem)
    verify_certificate(certificate=cert, chain=[], server_name="127.0.0.1", cadata=ck.cert_pem)


def test_self_signed_wrong_server_name() -> None:
    ck = self_signed(["localhost", "127.0.0.1"])
    cert = _cert(ck)
    with pytest.raises(AlertBadCertificate):
        verify_certificate(certificate=cert, chain=[], server_name="other.test", cadata=ck.cert_pem)
    with pytest.raises(AlertBadCertificate):
        verify_certificate(certificate=cert, chain=[], server_name="127.0.0.2", cadata=ck.cert_pem)


def test_self_signed_not_trusted_by_other_self_signed() -> None:
    ck = self_signed(["localhost"])
    other = self_signed(["localhost"])
    with pytest.raises(AlertBadCertificate):
        verify_certificate(
            certificate=_cert(ck), chain=[], server_name="localhost", cadata=other.cert_pem
        )


# --- new_ca / issue ----------------------------------------------------------


def test_new_ca_round_trip() -> None:
    ca = new_ca("conec test CA")
    cert = _cert(ca)
    _check_key(ca)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "conec test CA"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    _check_validity(cert, datetime.timedelta(days=3650))

    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical
    assert isinstance(bc.value, x509.BasicConstraints)
    assert bc.value.ca and bc.value.path_length is None

    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical
    assert isinstance(ku.value, x509.KeyUsage)
    assert ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature

    ski = _ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    assert cert_names(ca.cert_pem) == []


def test_issue_round_trip() -> None:
    ca = new_ca("conec test CA")
    leaf = issue(ca, ["node1.test", "127.0.0.1"])
    cert = _cert(leaf)
    ca_cert = _cert(ca)
    _check_key(leaf)
    assert leaf.key_pem != ca.key_pem
    assert cert.issuer == ca_cert.subject
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node1.test"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    cert.verify_directly_issued_by(ca_cert)
    _check_validity(cert, datetime.timedelta(days=825))

    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and isinstance(bc.value, x509.BasicConstraints) and not bc.value.ca
    ku = _ext(cert, x509.KeyUsage).value
    assert isinstance(ku, x509.KeyUsage) and ku.digital_signature and not ku.key_cert_sign
    eku = _ext(cert, x509.ExtendedKeyUsage).value
    assert isinstance(eku, x509.ExtendedKeyUsage)
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}

    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    ca_ski = _ext(ca_cert, x509.SubjectKeyIdentifier).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert isinstance(ca_ski, x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ca_ski.digest

    assert cert_names(leaf.cert_pem) == ["node1.test", "127.0.0.1"]


def test_issued_leaf_verifies_with_its_ca() -> None:
    ca = new_ca("conec test CA")
    leaf = _cert(issue(ca, ["node1.test", "127.0.0.1"]))
    verify_certificate(certificate=leaf, chain=[], server_name="node1.test", cadata=ca.cert_pem)
    verify_certificate(certificate=leaf, chain=[], server_name="127.0.0.1", cadata=ca.cert_pem)
    with pytest.raises(AlertBadCertificate):
        verify_certificate(certificate=leaf, chain=[], server_name="node2.test", cadata=ca.cert_pem)


def test_issued_leaf_fails_with_other_ca() -> None:
    ca = new_ca("conec test CA")
    other = new_ca("conec test CA")  # same name, different key
    leaf = _cert(issue(ca, ["node1.test"]))
    with pytest.raises(AlertBadCertificate):
        verify_certificate(
            certificate=leaf, chain=[], server_name="node1.test", cadata=other.cert_pem
        )


def test_issued_leaf_is_not_its_own_trust_anchor() -> None:
    leaf = issue(new_ca("conec test CA"), ["node1.test"])
    with pytest.raises(AlertBadCertificate):
        verify_certificate(
            certificate=_cert(leaf), chain=[], server_name="node1.test", cadata=leaf.cert_pem
        )


def test_issue_rejects_non_ca() -> None:
    with pytest.raises(ValueError, match="CA"):
        issue(self_signed(["localhost"]), ["node1.test"])


def test_issue_rejects_mismatched_key() -> None:
    ca = new_ca("a")
    bad = CertKey(cert_pem=ca.cert_pem, key_pem=new_ca("b").key_pem)
    with pytest.raises(ValueError, match="does not match"):
        issue(bad, ["node1.test"])


# --- names validation --------------------------------------------------------


def test_empty_names() -> None:
    with pytest.raises(ValueError, match="at least one"):
        self_signed([])
    with pytest.raises(ValueError, match="at least one"):
        issue(new_ca("ca"), [])
    with pytest.raises(ValueError, match="empty name"):
        self_signed(["localhost", ""])
    with pytest.raises(ValueError):
        new_ca("")


# --- CertKey -----------------------------------------------------------------


def test_certkey_frozen_and_der() -> None:
    ck = self_signed(["localhost"])
    with pytest.raises(AttributeError):
        ck.cert_pem = b""  # type: ignore[misc]
    assert x509.load_der_x509_certificate(ck.cert_der) == _cert(ck)


@posix_only
def test_write(tmp_path: Path) -> None:
    ca = new_ca("ca")
    ck = issue(ca, ["node1.test"])
    cert_path = tmp_path / "node.crt"
    key_path = tmp_path / "node.key"
    ck.write(cert_path, key_path)

    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key() == cert.public_key()
    assert cert_path.read_bytes() == ck.cert_pem
    assert key_path.read_bytes() == ck.key_pem


@posix_only
def test_write_tightens_existing_key_file_and_overwrites(tmp_path: Path) -> None:
    cert_path = tmp_path / "c.pem"
    key_path = tmp_path / "k.pem"
    key_path.write_bytes(b"x" * 10_000)
    os.chmod(key_path, 0o644)
    ck = self_signed(["localhost"])
    ck.write(str(cert_path), str(key_path))
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert key_path.read_bytes() == ck.key_pem  # truncated, not partially overwritten


# --- load_pem ----------------------------------------------------------------


def test_load_pem_bytes_is_content() -> None:
    pem = self_signed(["localhost"]).cert_pem
    assert load_pem(pem) is pem


def test_load_pem_str_and_path(tmp_path: Path) -> None:
    pem = self_signed(["localhost"]).cert_pem
    p = tmp_path / "cert.pem"
    p.write_bytes(pem)
    assert load_pem(str(p)) == pem
    assert load_pem(p) == pem


def test_load_pem_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(FileNotFoundError, match=r"nope\.pem") as exc_info:
        load_pem(missing)
    assert exc_info.value.filename == str(missing)
    with pytest.raises(FileNotFoundError, match=r"nope\.pem"):
        load_pem(str(missing))
