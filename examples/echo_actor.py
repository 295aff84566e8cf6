"""An echo service as an `Actor`, and a caller that tells and asks it.

Starts its own Coordinator, spawns the `Echo` actor on its own client, then
a caller client tells it a few notes (fire-and-forget, in order) and asks it
questions (request/reply). One ask makes `receive` raise: the caller gets a
`RemoteError` and the actor keeps serving.

    python examples/echo_actor.py
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from conec_actors import Actor, Client, ClientConfig, Coord, CoordConfig, RemoteError
from conec_actors.certs import self_signed


class Echo(Actor):
    """Answers every ask with what it was sent; remembers the notes it was told."""

    def __init__(self, greeting: str) -> None:
        self.greeting = greeting
        self.notes: list[str] = []

    async def on_start(self) -> None:
        print(f"[echo] {self.greeting} I am {self.id!r}")

    async def receive(self, sender: str, body: Any) -> Any:
        if isinstance(body, dict) and "note" in body:
            self.notes.append(body["note"])
            print(f"[echo] noted {body['note']!r} from {sender}")
            return None
        if body == "notes?":
            return self.notes
        if body == "divide by zero":
            return 1 / 0  # raises: the asker gets RemoteError
        return {"echo": body, "from": self.id}

    async def on_stop(self) -> None:
        print(f"[echo] stopping after {len(self.notes)} notes")


async def main() -> None:
    # The actor logs the traceback of a failing receive; keep the transcript short.
    logging.getLogger("conec_actors.actor").setLevel(logging.CRITICAL)
    cert = self_signed(["localhost"])
    async with Coord.start(CoordConfig(cert.cert_pem, cert.key_pem, port=0)) as coord:
        def cfg(name: str) -> ClientConfig:
            return ClientConfig(name, "localhost", addr=coord.address, ca=cert.cert_pem)

        async with await Echo.spawn(cfg("echo"), "hello!") as echo, \
                Client.connect(cfg("caller")) as caller:
            reply = await caller.ask("echo", "ping")
            print(f"[caller] ask 'ping' -> {reply}")
            for note in ("first", "second", "third"):
                await caller.tell("echo", {"note": note})
                print(f"[caller] told note {note!r}")
            # Tells and asks share one ordered path: the notes are all in.
            print(f"[caller] ask 'notes?' -> {await caller.ask('echo', 'notes?')}")
            try:
                await caller.ask("echo", "divide by zero")
            except RemoteError as exc:
                print(f"[caller] ask 'divide by zero' -> RemoteError {exc.type_name}: "
                      f"{exc.message}")
            reply = await caller.ask("echo", [1, 2, 3], timeout=2.0)
            print(f"[caller] ask [1, 2, 3] -> {reply} (still serving)")
            assert echo.notes == ["first", "second", "third"]
    print("echo done")


if __name__ == "__main__":
    asyncio.run(main())
