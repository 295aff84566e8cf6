"""A chat over direct streams.

Starts its own Coordinator and three scripted participants (alice, bob and
carol) in one process. Every pair of participants opens a direct channel
(the Coordinator only introduces them), each participant opens one direct
stream to every other one, and the script's lines travel peer to peer. The
transcript shows who heard what; at the end the Coordinator's figures show
that no chat byte went through it.

    python examples/chat.py
"""

from __future__ import annotations

import asyncio
import itertools

from conec_actors import (
    Client,
    ClientConfig,
    Coord,
    CoordConfig,
    IncomingStream,
    OutStream,
)
from conec_actors.certs import self_signed

NAMES = ["alice", "bob", "carol"]
SCRIPT = [
    ("alice", "hi both, alice here over a direct stream"),
    ("bob", "hello alice! no relay in between?"),
    ("carol", "none: the Coordinator only introduced us"),
    ("alice", "lunch at noon?"),
    ("bob", "sounds good"),
    ("carol", "count me in, see you there"),
]


class Participant:
    """One chat client: a direct stream out to each peer, and a reader for
    each stream the peers open to it."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.out: dict[str, OutStream] = {}
        self.heard: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.readers: list[asyncio.Task[None]] = []
        self.accepting = asyncio.create_task(self._accept(len(NAMES) - 1))

    async def _accept(self, n: int) -> None:
        """Take the streams the other participants open to us."""
        it = self.client.incoming.__aiter__()
        for _ in range(n):
            incoming = await anext(it)
            self.readers.append(asyncio.create_task(self._read(incoming)))

    async def _read(self, incoming: IncomingStream) -> None:
        assert incoming.stream_id.is_direct
        async for msg in incoming.recv:  # ends when the peer finishes its stream
            await self.heard.put((incoming.peer, msg.decode()))

    async def say(self, text: str) -> None:
        for send in self.out.values():
            await send.send(text.encode())

    async def leave(self) -> None:
        for send in self.out.values():
            await send.finish()


async def main() -> None:
    cert = self_signed(["localhost"])
    async with Coord.start(CoordConfig(cert.cert_pem, cert.key_pem, port=0)) as coord:
        print(f"Coordinator listening on {coord.address[0]}:{coord.address[1]}")
        clients = [await Client.connect(ClientConfig(name, "localhost", addr=coord.address,
                                                     ca=cert.cert_pem))
                   for name in NAMES]
        people = {c.id: Participant(c) for c in clients}
        try:
            # One channel per pair, opened by either side.
            for a, b in itertools.combinations(clients, 2):
                await a.new_channel(b.id)
                print(f"channel {a.id} <-> {b.id} open")
            # Each participant opens a direct stream to every other one.
            for p in people.values():
                for peer in NAMES:
                    if peer != p.client.id:
                        p.out[peer], _ = await p.client.new_direct_stream(peer)
            for p in people.values():
                await asyncio.wait_for(p.accepting, 5)
            before = (await coord.stats())["bytes_forwarded"]
            print()
            for speaker, text in SCRIPT:
                print(f"<{speaker}> {text}")
                await people[speaker].say(text)
                for name, p in people.items():
                    if name != speaker:
                        who, heard = await asyncio.wait_for(p.heard.get(), 5)
                        assert (who, heard) == (speaker, text)
                        print(f"    {name} heard it from {who}")
            print()
            for p in people.values():
                await p.leave()
            for p in people.values():
                await asyncio.wait_for(asyncio.gather(*p.readers), 5)
            relayed = (await coord.stats())["bytes_forwarded"] - before
            print(f"chat over: {len(SCRIPT)} lines, each heard by {len(NAMES) - 1} "
                  f"participants over direct streams; {relayed} chat bytes relayed "
                  "by the Coordinator")
        finally:
            for c in clients:
                await c.close()


if __name__ == "__main__":
    asyncio.run(main())
