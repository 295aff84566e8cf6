"""The control stream, read the same way at both ends of every connection.

Sans-I/O: `ControlReader` takes the stream's bytes and gives decoded control
messages, one at a time, when its owner is ready to act on them. It keeps the
account the flow control needs: `acted_on` is how far into the stream the
owner may grant credit, which excludes a partial message's body and messages not
taken yet, so a peer that sends requests faster than its replies are read
stops being read instead of piling them up here.
"""

from __future__ import annotations

from collections import deque

from . import wire
from .errors import ProtocolError
from .framing import HEADER_SIZE, FrameDecoder, FrameTooLarge

#: The stream that carries control messages on every connection: the first
#: bidirectional stream the dialling side opens.
CONTROL_STREAM = 0
#: Control messages are small; a larger one is a protocol error.
CONTROL_MAX = 64 * 1024


class ControlReader:
    """Frames in (`feed`), control messages out (`next`), credit accounted."""

    __slots__ = ("_decoder", "_parked", "_parked_bytes", "_received", "fin")

    def __init__(self, max_size: int = CONTROL_MAX) -> None:
        self._decoder = FrameDecoder(max_size)
        self._received = 0
        self._parked: deque[bytes] = deque()
        self._parked_bytes = 0
        #: The peer finished the stream (what was sent before still counts).
        self.fin = False

    def feed(self, data: bytes, fin: bool = False) -> None:
        """Add the stream's next bytes; `ProtocolError` for an oversize message."""
        self._received += len(data)
        try:
            for raw in self._decoder.feed(data):
                self._parked.append(raw)
                self._parked_bytes += HEADER_SIZE + len(raw)
        except FrameTooLarge as exc:
            raise ProtocolError(f"control message too large: {exc}") from None
        self.fin = self.fin or fin

    def __bool__(self) -> bool:
        """True while a whole message waits to be taken."""
        return bool(self._parked)

    def next(self) -> wire.Control:
        """Take and decode the oldest whole message; `ProtocolError` if it is
        not a control message. Only call when the reader is true."""
        raw = self._parked.popleft()
        self._parked_bytes -= HEADER_SIZE + len(raw)
        return wire.decode(raw)

    @property
    def acted_on(self) -> int:
        """Offset up to which the stream was taken: what to grant credit for."""
        return self._received - self._decoder.buffered - self._parked_bytes

    @property
    def ended(self) -> bool:
        """The peer finished the stream and every message in it was taken."""
        return self.fin and not self._parked
