"""Shared helpers for the benchmarks under ``bench/``.

Self-contained on purpose: nothing here imports ``conec_actors``, so the
baseline benchmarks keep working while the package itself is in flux.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

#: Payload sizes (bytes) every throughput benchmark runs.
SIZES: tuple[int, ...] = (64, 1024, 65536)

#: Length of the big-endian frame header written by :func:`frame`.
HEADER_LEN = 4

#: 1 MB as reported in results (decimal, payload bytes only).
MB = 1_000_000


def make_self_signed(name: str) -> tuple[bytes, bytes]:
    """Return ``(cert_pem, key_pem)`` for a throw-away self-signed leaf certificate.

    ECDSA P-256 key, subject CN and DNS SAN set to *name*, ``BasicConstraints(ca=False)``,
    valid from one hour ago until 30 days from now.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def median(xs: Iterable[float]) -> float:
    """Median of *xs* (mean of the two middle values for an even count)."""
    data = sorted(xs)
    if not data:
        raise ValueError("median() of an empty sequence")
    mid = len(data) // 2
    if len(data) % 2:
        return data[mid]
    return (data[mid - 1] + data[mid]) / 2


def percentile(xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``0 < p <= 100``) of *xs*."""
    if not xs:
        raise ValueError("percentile() of an empty sequence")
    data = sorted(xs)
    rank = max(1, math.ceil(p / 100 * len(data)))
    return data[min(rank, len(data)) - 1]


def emit(result: dict[str, Any]) -> None:
    """Print *result* as one JSON line on stdout (keys sorted) and flush."""
    print(json.dumps(result, sort_keys=True), flush=True)


def rates(size: int, msgs: int, seconds: float) -> dict[str, float]:
    """Throughput figures for *msgs* messages of *size* payload bytes over *seconds*.

    ``seconds`` is taken from the first to the last received message, so it spans
    ``msgs - 1`` inter-arrival intervals; that is what the rates are computed from.
    MB/s counts payload bytes only, with 1 MB = 1e6 bytes.
    """
    delivered = max(msgs - 1, 1)
    return {
        "msgs_per_s": delivered / seconds,
        "mb_per_s": delivered * size / seconds / MB,
    }


def frame(payload: bytes) -> bytes:
    """Return *payload* prefixed with its 4-byte big-endian length."""
    return len(payload).to_bytes(HEADER_LEN, "big") + payload


class FrameCounter:
    """Count complete :func:`frame`-encoded messages in a byte stream fed in chunks.

    Frames may be split across chunks arbitrarily (even inside the header); only the
    header bytes are ever buffered, payload bytes are skipped without copying.
    """

    __slots__ = ("_header", "_length", "_remaining", "count", "payload_bytes")

    def __init__(self) -> None:
        self.count = 0
        """Number of complete frames seen so far."""
        self.payload_bytes = 0
        """Total payload bytes of the complete frames seen so far."""
        self._header = bytearray()
        self._length = 0  # payload length of the frame being read
        self._remaining = 0  # payload bytes still missing from that frame

    def feed(self, chunk: bytes) -> int:
        """Consume *chunk*; return how many frames it completed."""
        completed = 0
        pos = 0
        end = len(chunk)
        while pos < end:
            if self._remaining:
                take = min(self._remaining, end - pos)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    completed += 1
                    self.payload_bytes += self._length
                continue
            need = HEADER_LEN - len(self._header)
            self._header += chunk[pos : pos + need]
            pos += min(need, end - pos)
            if len(self._header) < HEADER_LEN:
                break
            self._length = self._remaining = int.from_bytes(self._header, "big")
            self._header.clear()
            if not self._length:
                completed += 1
        self.count += completed
        return completed
