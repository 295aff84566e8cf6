"""Helper for tests/test_nat.py: one Coordinator or one Client, run inside a
network namespace (`ip netns exec NS python tests/nat_peer.py ROLE ...`) and
driven line by line over stdin; every answer is one JSON line on stdout.

    nat_peer.py coord DIR HOST
        Writes a self-signed certificate valid for HOST and "localhost" to
        DIR/coord.pem, starts a Coordinator on HOST port 0, prints
        {"ev": "ready", "port": P}. Commands:
          stats   -> {"ev": "stats", "stats": {...}}   (coord.stats(), JSON-safe)
          quit    -> closes, {"ev": "bye"}

    nat_peer.py client ID HOST PORT CA [--no-holepunch]
        Connects as ID to the Coordinator at HOST:PORT (the name checked
        against its certificate is HOST itself, an IP address SAN), trusting
        CA. Echoes every incoming stream back (message by message, then
        finishes) and reports {"ev": "incoming", ...} when one ends. Prints
        {"ev": "ready", "observed": [host, port]}. Commands:
          info                      -> {"ev": "info", "observed", "channels"}
          channel PEER              -> {"ev": "channel", "ok", "error", "elapsed", ...}
          xfer MODE PEER N SIZE     -> open a stream (MODE: direct = new_direct_stream,
                                       proxied = new_proxied_stream, auto = new_stream),
                                       send N messages of SIZE bytes while reading
                                       their echoes; {"ev": "xfer", "kind",
                                       "open_elapsed", "sent", "echoed", "ok", ...}
          quit                      -> closes, {"ev": "bye"}

Errors from the package are reported by exception class name ("error") and
message ("msg"), never as a traceback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from conec_actors import Client, ClientConfig, Coord, CoordConfig
from conec_actors.certs import self_signed


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields, default=str) + "\n")
    sys.stdout.flush()


def error_fields(exc: BaseException) -> dict[str, Any]:
    return {"error": type(exc).__name__, "msg": str(exc)}


async def stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def jsonable(value: Any) -> Any:
    """`coord.stats()` minus anything that is not plain JSON."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "__dict__"):
        return jsonable(vars(value))
    return str(value)


# -- coordinator ---------------------------------------------------------------------


async def run_coord(state_dir: str, host: str) -> None:
    ck = self_signed([host, "localhost"])
    ck.write(Path(state_dir) / "coord.pem", Path(state_dir) / "coord.key")
    coord = await Coord.start(CoordConfig(ck.cert_pem, ck.key_pem, host=host, port=0))
    try:
        emit(ev="ready", port=coord.port)
        reader = await stdin_lines()
        while line := (await reader.readline()).decode().strip():
            if line == "stats":
                emit(ev="stats", stats=jsonable(await coord.stats()))
            elif line == "quit":
                break
            else:
                emit(ev="error", error="UnknownCommand", msg=line)
    finally:
        await coord.close()
    emit(ev="bye")


# -- client --------------------------------------------------------------------------


async def echo(client: Client) -> None:
    """Echo every incoming stream back, message by message."""
    tasks: set[asyncio.Task[None]] = set()

    async def one(inc: Any) -> None:
        count = 0
        try:
            async for msg in inc.recv:
                await inc.send.send(msg)
                count += 1
            await inc.send.finish()
            emit(ev="incoming", peer=inc.peer, kind=inc.stream_id.kind, count=count, ok=True)
        except Exception as exc:
            emit(ev="incoming", peer=inc.peer, kind=inc.stream_id.kind, count=count, ok=False,
                 **error_fields(exc))

    async for inc in client.incoming:
        t = asyncio.create_task(one(inc))
        tasks.add(t)
        t.add_done_callback(tasks.discard)


async def do_channel(client: Client, peer: str) -> None:
    t0 = time.monotonic()
    try:
        await client.new_channel(peer)
    except Exception as exc:
        emit(ev="channel", ok=False, elapsed=time.monotonic() - t0,
             channels=client.channels(), **error_fields(exc))
    else:
        emit(ev="channel", ok=True, error=None, elapsed=time.monotonic() - t0,
             channels=client.channels())


async def do_xfer(client: Client, mode: str, peer: str, n: int, size: int) -> None:
    opener = {"direct": client.new_direct_stream, "proxied": client.new_proxied_stream,
              "auto": client.new_stream}[mode]
    t0 = time.monotonic()
    try:
        send, recv = await opener(peer)
    except Exception as exc:
        emit(ev="xfer", mode=mode, ok=False, open_elapsed=time.monotonic() - t0,
             kind=None, sent=0, echoed=0, **error_fields(exc))
        return
    opened = time.monotonic()
    sent = echoed = 0
    mismatch: int | None = None

    async def reader() -> None:
        nonlocal echoed, mismatch
        async for msg in recv:
            if mismatch is None and msg != payload(echoed, size):
                mismatch = echoed
            echoed += 1

    try:
        reading = asyncio.create_task(reader())
        for i in range(n):
            await send.send(payload(i, size))
            sent += 1
        await send.finish()
        await asyncio.wait_for(reading, 20)
    except Exception as exc:
        emit(ev="xfer", mode=mode, ok=False, kind=send.stream_id.kind,
             open_elapsed=opened - t0, sent=sent, echoed=echoed, **error_fields(exc))
        return
    emit(ev="xfer", mode=mode, ok=echoed == n and mismatch is None, error=None,
         kind=send.stream_id.kind, open_elapsed=opened - t0,
         elapsed=time.monotonic() - opened, sent=sent, echoed=echoed, mismatch=mismatch,
         channels=client.channels())


def payload(i: int, size: int) -> bytes:
    head = b"%08d:" % i
    return head + b"x" * max(0, size - len(head))


async def run_client(client_id: str, host: str, port: int, ca: str, holepunch: bool) -> None:
    cfg = ClientConfig(client_id, host, addr=(host, port), ca=ca, holepunch=holepunch)
    try:
        client = await Client.connect(cfg)
    except Exception as exc:
        emit(ev="ready", ok=False, **error_fields(exc))
        return
    echoing = asyncio.create_task(echo(client))
    busy: set[asyncio.Task[None]] = set()
    try:
        emit(ev="ready", ok=True, observed=list(client.observed_address))
        reader = await stdin_lines()
        while line := (await reader.readline()).decode().strip():
            cmd, *args = line.split()
            if cmd == "info":
                emit(ev="info", observed=list(client.observed_address),
                     channels=client.channels())
                continue
            if cmd == "quit":
                break
            if cmd == "channel":
                job = do_channel(client, args[0])
            elif cmd == "xfer":
                job = do_xfer(client, args[0], args[1], int(args[2]), int(args[3]))
            else:
                emit(ev="error", error="UnknownCommand", msg=line)
                continue
            # Commands run concurrently: the test reads answers by "ev".
            t = asyncio.create_task(job)
            busy.add(t)
            t.add_done_callback(busy.discard)
    finally:
        for t in busy:
            t.cancel()
        await client.close()
        echoing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await echoing
    emit(ev="bye")


def main(argv: list[str]) -> None:
    logging.basicConfig(level=os.environ.get("NAT_PEER_LOG", "WARNING"), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    role, *args = argv
    if role == "coord":
        asyncio.run(run_coord(args[0], args[1]))
    elif role == "client":
        asyncio.run(run_client(args[0], args[1], int(args[2]), args[3],
                               "--no-holepunch" not in args[4:]))
    else:
        raise SystemExit(f"unknown role {role!r}: use coord or client")


if __name__ == "__main__":
    main(sys.argv[1:])
