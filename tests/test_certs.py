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


# --- certificates that break one rule (shared with the connection tests) ------


def make_cert(name: str, *, issuer: CertKey | None = None, ca: bool | None = False,
              digital_signature: bool | None = True,
              eku: list[x509.ObjectIdentifier] | None = None,
              forge_signature: bool = False, chain: tuple[CertKey, ...] = ()) -> CertKey:
    """A certificate for `name` built by hand: issued by `issuer` (self-signed
    without), with basicConstraints CA:`ca` (absent for None), a keyUsage with
    digitalSignature as given (absent for None), the extendedKeyUsage `eku`
    (absent for None). `forge_signature` signs with a key other than the
    issuer's (for a self-signed certificate: its own key still matches the
    certificate, only the self-signature is wrong). `chain` certificates are
    appended to the PEM, as a peer presents intermediates."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])
    if issuer is None:
        issuer_name, sign_key = subject, key
    else:
        issuer_cert = _cert(issuer)
        issuer_name = issuer_cert.subject
        sign_key = serialization.load_pem_private_key(issuer.key_pem, password=None)
    if forge_signature:
        sign_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(hours=1))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False))
    if ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if digital_signature is not None:
        b = b.add_extension(x509.KeyUsage(
            digital_signature=digital_signature, content_commitment=False,
            key_encipherment=not digital_signature, data_encipherment=False,
            key_agreement=False, key_cert_sign=bool(ca), crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
    if eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    cert = b.sign(sign_key, hashes.SHA256())  # type: ignore[arg-type]
    pem = cert.public_bytes(serialization.Encoding.PEM) + b"".join(c.cert_pem for c in chain)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return CertKey(cert_pem=pem, key_pem=key_pem)


#: Certificates a client_ca-mode check refuses, each for one reason:
#: (make_cert arguments, words of the reason).
BAD_LEAVES: dict[str, tuple[dict[str, object], str]] = {
    "ca": ({"ca": True}, "CA:TRUE"),
    "no-digital-signature": ({"digital_signature": False}, "digitalSignature"),
    "eku-without-client-auth": ({"eku": [ExtendedKeyUsageOID.SERVER_AUTH]}, "clientAuth"),
}


@pytest.mark.parametrize("kind", sorted(BAD_LEAVES))
def test_check_chain_refuses_what_is_not_a_client_leaf(kind: str) -> None:
    from conec_actors.errors import CertificateError
    from conec_actors.tlsconf import check_chain

    ca = new_ca("client CA")
    kw, reason = BAD_LEAVES[kind]
    bad = make_cert("alice", issuer=ca, **kw)  # type: ignore[arg-type]
    with pytest.raises(CertificateError, match=reason):
        check_chain(_cert(bad), [], ca.cert_pem, "alice")
    # the same shape, but a proper leaf, is admitted; so are ours
    check_chain(_cert(make_cert("alice", issuer=ca, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])),
                [], ca.cert_pem, "alice")
    check_chain(_cert(make_cert("alice", issuer=ca, ca=None, digital_signature=None)),
                [], ca.cert_pem, "alice")
    check_chain(_cert(issue(ca, ["alice"])), [], ca.cert_pem, "alice")
    check_chain(_cert(self_signed(["alice"])), [], None, "alice")


def test_check_chain_admits_the_leaves_of_an_intermediate_configured_as_the_ca() -> None:
    from conec_actors.errors import CertificateError
    from conec_actors.tlsconf import check_chain

    root = new_ca("root")
    inter = make_cert("intermediate", issuer=root, ca=True, digital_signature=None)
    leaf = _cert(issue(inter, ["alice"]))
    with pytest.raises(CertificateError, match="not issued directly"):
        check_chain(leaf, [_cert(inter)], root.cert_pem, "alice")
    check_chain(leaf, [], inter.cert_pem, "alice")


def test_check_chain_refuses_a_self_signed_certificate_whose_signature_is_forged() -> None:
    from conec_actors.errors import CertificateError
    from conec_actors.tlsconf import check_chain

    forged = make_cert("alice", forge_signature=True)
    with pytest.raises(CertificateError, match="signature does not verify"):
        check_chain(_cert(forged), [], None, "alice")


def test_a_name_longer_than_a_common_name_is_carried_by_the_san() -> None:
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    ca = new_ca("ca")
    for ck in (self_signed([longest]), issue(ca, [longest])):
        cert = _cert(ck)
        assert cert_names(ck.cert_pem) == [longest]
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert cn == longest[:61] + "..."
    ss = self_signed([longest])
    verify_certificate(certificate=_cert(ss), chain=[], server_name=longest, cadata=ss.cert_pem)


def test_check_chain_refuses_unknown_critical_extensions_and_a_ca_that_cannot_sign() -> None:
    from conec_actors.errors import CertificateError
    from conec_actors.tlsconf import check_chain

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")])
    now = datetime.datetime.now(datetime.UTC)
    odd = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
           .public_key(key.public_key()).serial_number(1)
           .not_valid_before(now - datetime.timedelta(hours=1))
           .not_valid_after(now + datetime.timedelta(days=1))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("alice")]), critical=False)
           .add_extension(x509.UnrecognizedExtension(
               x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"), critical=True)
           .sign(key, hashes.SHA256()))
    with pytest.raises(CertificateError, match=r"critical extension [0-9.]+ is unknown"):
        check_chain(odd, [], None, "alice")
    # a leaf configured as the client CA issues nothing
    leaf_as_ca = make_cert("not-a-ca", digital_signature=True)
    issued = _cert(make_cert("alice", issuer=leaf_as_ca))
    with pytest.raises(CertificateError, match="may not sign certificates"):
        check_chain(issued, [], leaf_as_ca.cert_pem, "alice")
    # among CAs of one name, the one whose key signed it
    twin = make_cert("twin", ca=True, digital_signature=None)
    other_twin = make_cert("twin", ca=True, digital_signature=None)
    issued = _cert(make_cert("alice", issuer=twin))
    check_chain(issued, [], other_twin.cert_pem + twin.cert_pem, "alice")
    with pytest.raises(CertificateError, match="signature does not verify"):
        check_chain(issued, [], other_twin.cert_pem, "alice")
