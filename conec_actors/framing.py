"""Message framing: a 4-byte big-endian length, then the payload.

Sans-I/O: `FrameDecoder` takes byte chunks and gives whole messages;
`FrameScanner` only tracks frame boundaries (the Coordinator forwards bytes
as they come and needs to know where messages end, not what they hold).
"""

from __future__ import annotations

HEADER_SIZE = 4
#: Hard ceiling on any frame, whatever the configuration says (2**32 - 1 is
#: what 4 bytes can express).
MAX_FRAME = 2**32 - 1


class FrameTooLarge(Exception):
    """A frame header announced more than the allowed size (internal)."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")


def frame(payload: bytes | bytearray | memoryview) -> bytes:
    """Return `payload` with its 4-byte length header in front."""
    return len(payload).to_bytes(HEADER_SIZE, "big") + payload


class FrameDecoder:
    """Reassembles messages from byte chunks; refuses frames above `max_size`."""

    __slots__ = ("_buf", "_need", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._need = -1  # payload size of the frame being read, -1: header pending

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a whole message."""
        return len(self._buf)

    @property
    def at_boundary(self) -> bool:
        """True when no partial frame is buffered."""
        return not self._buf and self._need < 0

    def feed(self, data: bytes) -> list[bytes]:
        """Add `data`; return the messages it completed, in order.

        Raises `FrameTooLarge` as soon as a header announces an oversize frame.
        """
        if self._need < 0 and not self._buf and len(data) >= HEADER_SIZE:
            # Common case (a small message in one packet): one whole frame.
            size = int.from_bytes(data[:HEADER_SIZE], "big")
            if size <= self.max_size and len(data) == HEADER_SIZE + size:
                return [data[HEADER_SIZE:]]
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        need = self._need
        while True:
            if need < 0:
                if end - pos < HEADER_SIZE:
                    break
                need = int.from_bytes(buf[pos:pos + HEADER_SIZE], "big")
                pos += HEADER_SIZE
                if need > self.max_size:
                    self._need = need
                    raise FrameTooLarge(need, self.max_size)
            if end - pos < need:
                break
            out.append(bytes(buf[pos:pos + need]))
            pos += need
            need = -1
        self._need = need
        if pos:
            del buf[:pos]
        return out


class FrameScanner:
    """Counts whole frames in a byte flow without keeping the bytes.

    `feed` returns how many frames the chunk completed; `at_boundary` tells
    whether the flow may end here without truncating a message.
    """

    __slots__ = ("_header", "_remaining", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._remaining = 0  # payload bytes still expected for the current frame
        self._header = b""  # partial header bytes

    @property
    def at_boundary(self) -> bool:
        return self._remaining == 0 and not self._header

    def feed(self, data: bytes) -> int:
        n = len(data)
        pos = 0
        frames = 0
        remaining = self._remaining
        while pos < n:
            if remaining:
                step = min(remaining, n - pos)
                pos += step
                remaining -= step
                if not remaining:
                    frames += 1
                continue
            if self._header or n - pos < HEADER_SIZE:
                take = min(HEADER_SIZE - len(self._header), n - pos)
                self._header += data[pos:pos + take]
                pos += take
                if len(self._header) < HEADER_SIZE:
                    break
                size = int.from_bytes(self._header, "big")
                self._header = b""
            else:
                size = int.from_bytes(data[pos:pos + HEADER_SIZE], "big")
                pos += HEADER_SIZE
            if size > self.max_size:
                self._remaining = 0
                raise FrameTooLarge(size, self.max_size)
            if size == 0:
                frames += 1
            remaining = size
        self._remaining = remaining
        return frames
