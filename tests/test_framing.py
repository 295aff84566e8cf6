"""Tests for conec_actors.framing: frame(), FrameDecoder and FrameScanner.

The chunking tests use seeded `random.Random` instances so that every run sees
the same byte flows (hypothesis is not a dependency of the project).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from conec_actors.framing import (
    HEADER_SIZE,
    MAX_FRAME,
    FrameDecoder,
    FrameScanner,
    FrameTooLarge,
    frame,
)

SEEDS = range(8)


# --- helpers -------------------------------------------------------------------


def random_payloads(rng: random.Random, count: int, max_len: int = 300) -> list[bytes]:
    """Payloads of mixed sizes, with plenty of zero-length ones."""
    out = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.2:
            n = 0
        elif kind < 0.5:
            n = rng.randint(1, 8)
        else:
            n = rng.randint(1, max_len)
        out.append(rng.randbytes(n))
    return out


def frame_ends(payloads: list[bytes]) -> list[int]:
    """Offset just past each frame in the concatenation of the framed payloads."""
    ends = []
    pos = 0
    for p in payloads:
        pos += HEADER_SIZE + len(p)
        ends.append(pos)
    return ends


def random_chunks(rng: random.Random, data: bytes, max_chunk: int) -> Iterator[bytes]:
    pos = 0
    while pos < len(data):
        n = rng.randint(1, max_chunk)
        yield data[pos:pos + n]
        pos += n


def byte_chunks(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i:i + 1]


def check_decoder_flow(payloads: list[bytes], chunks: Iterator[bytes], max_size: int) -> None:
    """Feed `chunks` to a decoder, checking the result after every chunk:
    the messages completed so far, `at_boundary` and `buffered`."""
    ends = frame_ends(payloads)
    boundaries = {0, *ends}
    dec = FrameDecoder(max_size)
    got: list[bytes] = []
    fed = 0
    for chunk in chunks:
        msgs = dec.feed(chunk)
        fed += len(chunk)
        for m in msgs:
            assert type(m) is bytes
        got.extend(msgs)
        done = sum(1 for e in ends if e <= fed)
        assert got == payloads[:done]
        assert dec.at_boundary == (fed in boundaries)
        # What is buffered is the tail of the current, incomplete frame (its
        # header may or may not be counted).
        tail = fed - (ends[done - 1] if done else 0)
        if fed in boundaries:
            assert dec.buffered == 0
        else:
            assert max(0, tail - HEADER_SIZE) <= dec.buffered <= tail
    assert got == payloads
    assert dec.at_boundary
    assert dec.buffered == 0


def check_scanner_flow(payloads: list[bytes], chunks: Iterator[bytes], max_size: int) -> None:
    """Feed `chunks` to a scanner, checking the frame count and `at_boundary`
    after every chunk."""
    ends = frame_ends(payloads)
    boundaries = {0, *ends}
    sc = FrameScanner(max_size)
    counted = 0
    fed = 0
    for chunk in chunks:
        counted += sc.feed(chunk)
        fed += len(chunk)
        assert counted == sum(1 for e in ends if e <= fed)
        assert sc.at_boundary == (fed in boundaries)
    assert counted == len(payloads)
    assert sc.at_boundary


# --- frame() -----------------------------------------------------------------


def test_frame_prefixes_big_endian_length() -> None:
    assert frame(b"hello") == b"\x00\x00\x00\x05hello"
    assert frame(b"") == b"\x00\x00\x00\x00"
    assert frame(b"x" * 0x010203)[:HEADER_SIZE] == b"\x00\x01\x02\x03"


@pytest.mark.parametrize("payload", [bytearray(b"abc"), memoryview(b"abc")])
def test_frame_accepts_buffers_and_returns_bytes(payload: bytearray | memoryview) -> None:
    out = frame(payload)
    assert type(out) is bytes
    assert out == b"\x00\x00\x00\x03abc"


def test_max_frame_is_what_four_bytes_express() -> None:
    assert HEADER_SIZE == 4
    assert MAX_FRAME == 2**32 - 1


# --- FrameDecoder ------------------------------------------------------------


def test_decoder_single_message() -> None:
    dec = FrameDecoder(100)
    assert dec.at_boundary
    assert dec.buffered == 0
    assert dec.feed(frame(b"hello")) == [b"hello"]
    assert dec.at_boundary
    assert dec.buffered == 0


def test_decoder_several_messages_in_one_chunk() -> None:
    dec = FrameDecoder(100)
    data = frame(b"a") + frame(b"") + frame(b"bcd") + frame(b"")
    assert dec.feed(data) == [b"a", b"", b"bcd", b""]
    assert dec.at_boundary


def test_decoder_empty_feed_is_a_no_op() -> None:
    dec = FrameDecoder(100)
    assert dec.feed(b"") == []
    assert dec.at_boundary
    dec.feed(frame(b"abc")[:5])
    assert dec.feed(b"") == []
    assert not dec.at_boundary
    assert dec.feed(b"bc") == [b"abc"]


def test_decoder_zero_length_messages() -> None:
    dec = FrameDecoder(0)
    assert dec.feed(frame(b"")) == [b""]
    assert dec.at_boundary
    assert dec.feed(frame(b"") * 5) == [b""] * 5
    assert dec.at_boundary


def test_decoder_zero_length_message_header_split() -> None:
    dec = FrameDecoder(10)
    assert dec.feed(b"\x00\x00") == []
    assert not dec.at_boundary
    assert dec.buffered == 2
    assert dec.feed(b"\x00\x00") == [b""]
    assert dec.at_boundary
    assert dec.buffered == 0


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_decoder_header_split_across_chunks(cut: int) -> None:
    data = frame(b"payload")
    dec = FrameDecoder(100)
    assert dec.feed(data[:cut]) == []
    assert not dec.at_boundary
    assert dec.buffered == cut
    assert dec.feed(data[cut:]) == [b"payload"]
    assert dec.at_boundary
    assert dec.buffered == 0


def test_decoder_not_at_boundary_after_a_bare_header() -> None:
    """A whole header with no payload yet is not a boundary, even though no
    payload byte is buffered."""
    dec = FrameDecoder(100)
    assert dec.feed(frame(b"abcde")[:HEADER_SIZE]) == []
    assert not dec.at_boundary
    assert dec.buffered <= HEADER_SIZE
    assert dec.feed(b"abcd") == []
    assert not dec.at_boundary
    assert 4 <= dec.buffered <= 4 + HEADER_SIZE
    assert dec.feed(b"e") == [b"abcde"]
    assert dec.at_boundary
    assert dec.buffered == 0


def test_decoder_message_then_partial_in_one_chunk() -> None:
    dec = FrameDecoder(100)
    data = frame(b"one") + frame(b"two")
    assert dec.feed(data[:-1]) == [b"one"]
    assert not dec.at_boundary
    assert 2 <= dec.buffered <= 2 + HEADER_SIZE
    assert dec.feed(data[-1:]) == [b"two"]
    assert dec.at_boundary


def test_decoder_returns_independent_copies() -> None:
    dec = FrameDecoder(100)
    first = dec.feed(frame(b"first"))
    dec.feed(frame(b"second"))
    assert first == [b"first"]


@pytest.mark.parametrize("seed", SEEDS)
def test_decoder_byte_by_byte(seed: int) -> None:
    rng = random.Random(seed)
    payloads = random_payloads(rng, 60)
    data = b"".join(frame(p) for p in payloads)
    check_decoder_flow(payloads, byte_chunks(data), max_size=300)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("max_chunk", [3, 17, 500, 5000])
def test_decoder_random_chunks(seed: int, max_chunk: int) -> None:
    rng = random.Random(seed * 1000 + max_chunk)
    payloads = random_payloads(rng, 200)
    data = b"".join(frame(p) for p in payloads)
    check_decoder_flow(payloads, random_chunks(rng, data, max_chunk), max_size=300)


def test_decoder_whole_flow_in_one_chunk() -> None:
    rng = random.Random(1234)
    payloads = random_payloads(rng, 500)
    data = b"".join(frame(p) for p in payloads)
    dec = FrameDecoder(300)
    assert dec.feed(data) == payloads
    assert dec.at_boundary
    assert dec.buffered == 0


def test_decoder_does_not_keep_consumed_bytes() -> None:
    """The buffer holds at most one partial frame, however long the flow."""
    rng = random.Random(99)
    payloads = random_payloads(rng, 300, max_len=50)
    data = b"".join(frame(p) for p in payloads)
    dec = FrameDecoder(50)
    for chunk in random_chunks(rng, data, 40):
        dec.feed(chunk)
        assert dec.buffered < 40 + 50 + HEADER_SIZE
    assert dec.buffered == 0


def test_decoder_too_large_raised_on_bare_header() -> None:
    dec = FrameDecoder(10)
    with pytest.raises(FrameTooLarge) as info:
        dec.feed((11).to_bytes(HEADER_SIZE, "big"))
    assert info.value.size == 11
    assert info.value.limit == 10
    assert "11" in str(info.value) and "10" in str(info.value)


def test_decoder_too_large_raised_when_split_header_completes() -> None:
    header = (1000).to_bytes(HEADER_SIZE, "big")
    dec = FrameDecoder(999)
    for i in range(HEADER_SIZE - 1):
        assert dec.feed(header[i:i + 1]) == []
    with pytest.raises(FrameTooLarge) as info:
        dec.feed(header[-1:])
    assert (info.value.size, info.value.limit) == (1000, 999)


def test_decoder_too_large_after_good_messages() -> None:
    dec = FrameDecoder(10)
    assert dec.feed(frame(b"ok") + frame(b"")) == [b"ok", b""]
    with pytest.raises(FrameTooLarge):
        dec.feed(frame(b"x" * 11))


def test_decoder_too_large_with_full_header_value() -> None:
    dec = FrameDecoder(2**20)
    with pytest.raises(FrameTooLarge) as info:
        dec.feed(b"\xff\xff\xff\xff")
    assert info.value.size == MAX_FRAME


def test_decoder_exact_limit_accepted() -> None:
    dec = FrameDecoder(10)
    assert dec.feed(frame(b"x" * 10)) == [b"x" * 10]
    assert dec.at_boundary
    # also when the header arrives alone
    dec.feed((10).to_bytes(HEADER_SIZE, "big"))
    assert dec.feed(b"y" * 10) == [b"y" * 10]


def test_decoder_max_size_zero_refuses_one_byte() -> None:
    dec = FrameDecoder(0)
    assert dec.feed(frame(b"")) == [b""]
    with pytest.raises(FrameTooLarge):
        dec.feed(frame(b"x"))


# --- FrameScanner ------------------------------------------------------------


def test_scanner_counts_frames_in_one_chunk() -> None:
    sc = FrameScanner(100)
    assert sc.at_boundary
    assert sc.feed(frame(b"a") + frame(b"") + frame(b"bcd")) == 3
    assert sc.at_boundary


def test_scanner_empty_feed_is_a_no_op() -> None:
    sc = FrameScanner(100)
    assert sc.feed(b"") == 0
    assert sc.at_boundary
    sc.feed(frame(b"abc")[:2])
    assert sc.feed(b"") == 0
    assert not sc.at_boundary


def test_scanner_zero_length_frames_counted() -> None:
    sc = FrameScanner(0)
    assert sc.feed(frame(b"")) == 1
    assert sc.at_boundary
    assert sc.feed(frame(b"") * 7) == 7
    assert sc.at_boundary
    # a zero-length frame whose header is split
    assert sc.feed(b"\x00") == 0
    assert not sc.at_boundary
    assert sc.feed(b"\x00\x00\x00") == 1
    assert sc.at_boundary


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_scanner_header_split_across_chunks(cut: int) -> None:
    data = frame(b"payload") + frame(b"")
    sc = FrameScanner(100)
    assert sc.feed(data[:cut]) == 0
    assert not sc.at_boundary
    assert sc.feed(data[cut:]) == 2
    assert sc.at_boundary


def test_scanner_not_at_boundary_after_a_bare_header() -> None:
    sc = FrameScanner(100)
    assert sc.feed(frame(b"abc")[:HEADER_SIZE]) == 0
    assert not sc.at_boundary
    assert sc.feed(b"ab") == 0
    assert not sc.at_boundary
    assert sc.feed(b"c") == 1
    assert sc.at_boundary


@pytest.mark.parametrize("seed", SEEDS)
def test_scanner_byte_by_byte(seed: int) -> None:
    rng = random.Random(seed)
    payloads = random_payloads(rng, 60)
    data = b"".join(frame(p) for p in payloads)
    check_scanner_flow(payloads, byte_chunks(data), max_size=300)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("max_chunk", [3, 17, 500, 5000])
def test_scanner_random_chunks(seed: int, max_chunk: int) -> None:
    rng = random.Random(seed * 1000 + max_chunk)
    payloads = random_payloads(rng, 200)
    data = b"".join(frame(p) for p in payloads)
    check_scanner_flow(payloads, random_chunks(rng, data, max_chunk), max_size=300)


def test_scanner_whole_flow_in_one_chunk() -> None:
    rng = random.Random(4321)
    payloads = random_payloads(rng, 500)
    data = b"".join(frame(p) for p in payloads)
    sc = FrameScanner(300)
    assert sc.feed(data) == len(payloads)
    assert sc.at_boundary


@pytest.mark.parametrize("seed", SEEDS)
def test_scanner_agrees_with_decoder(seed: int) -> None:
    rng = random.Random(seed + 500)
    payloads = random_payloads(rng, 150)
    data = b"".join(frame(p) for p in payloads)
    dec = FrameDecoder(300)
    sc = FrameScanner(300)
    for chunk in random_chunks(rng, data, 64):
        assert sc.feed(chunk) == len(dec.feed(chunk))
        assert sc.at_boundary == dec.at_boundary


def test_scanner_too_large_raised_on_bare_header() -> None:
    sc = FrameScanner(10)
    with pytest.raises(FrameTooLarge) as info:
        sc.feed((11).to_bytes(HEADER_SIZE, "big"))
    assert (info.value.size, info.value.limit) == (11, 10)


def test_scanner_too_large_raised_when_split_header_completes() -> None:
    header = (1000).to_bytes(HEADER_SIZE, "big")
    sc = FrameScanner(999)
    for i in range(HEADER_SIZE - 1):
        assert sc.feed(header[i:i + 1]) == 0
    with pytest.raises(FrameTooLarge) as info:
        sc.feed(header[-1:])
    assert (info.value.size, info.value.limit) == (1000, 999)


def test_scanner_too_large_after_good_frames() -> None:
    sc = FrameScanner(10)
    assert sc.feed(frame(b"ok") + frame(b"")) == 2
    with pytest.raises(FrameTooLarge):
        sc.feed(frame(b"x" * 11))


def test_scanner_too_large_mid_chunk() -> None:
    sc = FrameScanner(10)
    with pytest.raises(FrameTooLarge) as info:
        sc.feed(frame(b"ok") + b"\xff\xff\xff\xff")
    assert info.value.size == MAX_FRAME


def test_scanner_exact_limit_accepted() -> None:
    sc = FrameScanner(10)
    assert sc.feed(frame(b"x" * 10)) == 1
    assert sc.at_boundary
    assert sc.feed((10).to_bytes(HEADER_SIZE, "big")) == 0
    assert sc.feed(b"y" * 10) == 1
    assert sc.at_boundary


def test_scanner_max_size_zero_refuses_one_byte() -> None:
    sc = FrameScanner(0)
    assert sc.feed(frame(b"")) == 1
    with pytest.raises(FrameTooLarge):
        sc.feed(frame(b"x"))
