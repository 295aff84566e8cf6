"""Tests for conec_actors.coord.directory (a routing worker's shard) and the
front-end <-> worker batch codec in conec_actors.coord.ipc."""

from __future__ import annotations

import msgspec
import pytest

from conec_actors import wire
from conec_actors.coord.directory import Directory
from conec_actors.coord.ipc import (
    IPC_VERSION,
    Entry,
    FromWorker,
    Lookup,
    Ready,
    Rebuild,
    Register,
    Reply,
    Shutdown,
    StatsReply,
    StatsRequest,
    ToWorker,
    Unregister,
    decode_from_worker,
    decode_to_worker,
    encode_batch,
)


def entry(client_id: str, frontend: str = "fe0", conn: int = 1,
          addr: tuple[str, int] = ("192.0.2.1", 5000), cert: bytes | None = None) -> Entry:
    """An entry; each connection has its own certificate unless `cert` is given."""
    if cert is None:
        cert = f"{frontend}/{conn}".encode() + bytes(range(24))
    return Entry(client_id, frontend, conn, addr, cert)


def reply(d: Directory, msg: object) -> Reply:
    r = d.handle(msg)  # type: ignore[arg-type]
    assert isinstance(r, Reply)
    return r


def register(d: Directory, e: Entry, req: int = 1) -> Reply:
    return reply(d, Register(req, e))


def lookup(d: Directory, dst: str, req: int = 2, src: str = "someone") -> Reply:
    return reply(d, Lookup(req, src, dst))


def figures(d: Directory, req: int = 99) -> dict[str, int]:
    r = d.handle(StatsRequest(req))
    assert isinstance(r, StatsReply)
    assert r.req == req
    return r.figures


# --- Register / Lookup -------------------------------------------------------


def test_register_then_lookup() -> None:
    d = Directory()
    e = entry("alice")
    r = register(d, e, req=10)
    assert r == Reply(10, 0, e)
    r = lookup(d, "alice", req=11, src="bob")
    assert r.req == 11
    assert r.code == 0
    assert r.entry == e
    assert d.entries == {"alice": e}


def test_lookup_unknown_id() -> None:
    d = Directory()
    r = lookup(d, "nobody", req=5)
    assert r.req == 5
    assert r.code == wire.Code.NO_SUCH_PEER
    assert r.entry is None


def test_lookup_is_by_exact_id() -> None:
    d = Directory()
    register(d, entry("alice"))
    assert lookup(d, "alice.example").code == wire.Code.NO_SUCH_PEER
    assert lookup(d, "alic").code == wire.Code.NO_SUCH_PEER


def test_several_ids() -> None:
    d = Directory()
    entries = [entry(f"c{i}", conn=i) for i in range(20)]
    for i, e in enumerate(entries):
        assert register(d, e, req=i).code == 0
    for e in entries:
        assert lookup(d, e.client_id).entry == e


def test_duplicate_from_other_conn_refused() -> None:
    d = Directory()
    first = entry("alice", "fe0", 1)
    register(d, first)
    r = register(d, entry("alice", "fe0", 2), req=7)
    assert r.req == 7
    assert r.code == wire.Code.DUPLICATE_ID
    assert r.entry == first  # who holds the id
    assert lookup(d, "alice").entry == first


def test_duplicate_from_other_frontend_refused() -> None:
    d = Directory()
    first = entry("alice", "fe0", 1)
    register(d, first)
    r = register(d, entry("alice", "fe1", 1))
    assert r.code == wire.Code.DUPLICATE_ID
    assert lookup(d, "alice").entry == first
    assert len(d.entries) == 1


def test_same_certificate_from_other_conn_replaces_the_stale_holder() -> None:
    d = Directory()
    stale = entry("alice", "fe0", 1, cert=b"alice-cert")
    register(d, stale)
    new = entry("alice", "fe0", 2, ("192.0.2.9", 6000), cert=b"alice-cert")
    r = register(d, new, req=7)
    assert r == Reply(7, 0, stale)  # admitted; the entry says whose to close
    assert lookup(d, "alice").entry == new
    f = figures(d)
    assert (f["entries"], f["admitted"], f["replaced"], f["refused"]) == (1, 1, 1, 0)


def test_the_stale_unregister_after_a_replacement_keeps_the_new_holder() -> None:
    d = Directory()
    register(d, entry("alice", "fe0", 1, cert=b"c"))
    new = entry("alice", "fe0", 2, cert=b"c")
    register(d, new)
    reply(d, Unregister(3, "alice", "fe0", 1))  # the stale connection closes
    assert lookup(d, "alice").entry == new
    assert register(d, new, req=4) == Reply(4, 0, new)  # a replay: nothing to close


def test_a_different_certificate_still_cannot_replace() -> None:
    d = Directory()
    first = entry("alice", "fe0", 1, cert=b"mine")
    register(d, first)
    r = register(d, entry("alice", "fe0", 2, cert=b"someone else's"))
    assert r.code == wire.Code.DUPLICATE_ID and r.entry == first
    assert lookup(d, "alice").entry == first
    assert figures(d)["replaced"] == 0


def test_replayed_register_is_idempotent() -> None:
    d = Directory()
    e = entry("alice", "fe0", 3)
    assert register(d, e, req=1) == Reply(1, 0, e)
    assert register(d, e, req=1) == Reply(1, 0, e)
    assert register(d, e, req=2) == Reply(2, 0, e)
    assert d.entries == {"alice": e}
    assert figures(d)["admitted"] == 1
    assert figures(d)["refused"] == 0
    assert figures(d)["entries"] == 1


def test_register_same_conn_updates_entry() -> None:
    d = Directory()
    register(d, entry("alice", "fe0", 3, ("192.0.2.1", 1)))
    newer = entry("alice", "fe0", 3, ("192.0.2.9", 2))
    assert register(d, newer).code == 0
    assert lookup(d, "alice").entry == newer


# --- Unregister --------------------------------------------------------------


def test_unregister_removes_matching_entry() -> None:
    d = Directory()
    register(d, entry("alice", "fe0", 1))
    r = reply(d, Unregister(4, "alice", "fe0", 1))
    assert r == Reply(4, 0)
    assert lookup(d, "alice").code == wire.Code.NO_SUCH_PEER
    assert d.entries == {}


@pytest.mark.parametrize(("frontend", "conn"), [("fe0", 2), ("fe1", 1), ("fe1", 2)])
def test_unregister_ignores_other_holder(frontend: str, conn: int) -> None:
    d = Directory()
    e = entry("alice", "fe0", 1)
    register(d, e)
    r = reply(d, Unregister(4, "alice", frontend, conn))
    assert r.code == 0
    assert lookup(d, "alice").entry == e


def test_unregister_is_idempotent() -> None:
    d = Directory()
    register(d, entry("alice", "fe0", 1))
    for req in (1, 1, 2):
        assert reply(d, Unregister(req, "alice", "fe0", 1)) == Reply(req, 0)
    assert d.entries == {}
    # unknown id: also fine
    assert reply(d, Unregister(3, "nobody", "fe0", 1)) == Reply(3, 0)


def test_stale_unregister_does_not_remove_new_holder() -> None:
    """alice disconnects and reconnects on another connection; the late
    Unregister of the old connection must not remove the new one."""
    d = Directory()
    register(d, entry("alice", "fe0", 1))
    reply(d, Unregister(2, "alice", "fe0", 1))
    new = entry("alice", "fe1", 7)
    assert register(d, new).code == 0
    reply(d, Unregister(2, "alice", "fe0", 1))  # replayed
    assert lookup(d, "alice").entry == new


def test_id_free_again_after_unregister() -> None:
    d = Directory()
    register(d, entry("alice", "fe0", 1))
    assert register(d, entry("alice", "fe0", 2)).code == wire.Code.DUPLICATE_ID
    reply(d, Unregister(3, "alice", "fe0", 1))
    assert register(d, entry("alice", "fe0", 2)).code == 0
    assert lookup(d, "alice").entry == entry("alice", "fe0", 2)


# --- Rebuild / Stats / Shutdown ----------------------------------------------


def test_rebuild_replaces_index() -> None:
    d = Directory()
    register(d, entry("old1"))
    register(d, entry("old2", conn=2))
    new = [entry("alice", "fe0", 1), entry("bob", "fe1", 2)]
    r = reply(d, Rebuild(8, new))
    assert r == Reply(8, 0)
    assert set(d.entries) == {"alice", "bob"}
    assert lookup(d, "old1").code == wire.Code.NO_SUCH_PEER
    assert lookup(d, "old2").code == wire.Code.NO_SUCH_PEER
    assert lookup(d, "alice").entry == new[0]
    assert lookup(d, "bob").entry == new[1]
    # the rebuilt entries are held: a different conn is a duplicate, the same is a replay
    assert register(d, entry("bob", "fe0", 1)).code == wire.Code.DUPLICATE_ID
    assert register(d, new[1]).code == 0


def test_rebuild_with_nothing_empties() -> None:
    d = Directory()
    register(d, entry("alice"))
    assert reply(d, Rebuild(1, [])).code == 0
    assert d.entries == {}
    assert lookup(d, "alice").code == wire.Code.NO_SUCH_PEER


def test_stats() -> None:
    d = Directory()
    f = figures(d, req=3)
    assert f["entries"] == 0
    assert f["lookups"] == 0
    assert f["admitted"] == 0
    assert f["refused"] == 0

    register(d, entry("alice", conn=1))
    register(d, entry("bob", conn=2))
    register(d, entry("alice", conn=9))  # refused
    lookup(d, "alice")
    lookup(d, "nobody")
    reply(d, Unregister(1, "bob", "fe0", 2))

    f = figures(d)
    assert f["entries"] == 1
    assert f["lookups"] == 2
    assert f["admitted"] == 2
    assert f["refused"] == 1
    # at least the 6 requests above (whether StatsRequests count is not pinned)
    assert f["handled"] >= 6
    assert all(isinstance(v, int) for v in f.values())
    lookup(d, "alice")
    lookup(d, "alice")
    f2 = figures(d)
    assert f2["lookups"] == 4
    assert f2["handled"] >= f["handled"] + 2


def test_shutdown_is_answered() -> None:
    d = Directory()
    assert reply(d, Shutdown(42)) == Reply(42, 0)


def test_unknown_message_gives_no_reply() -> None:
    d = Directory()
    assert d.handle(Ready("route", 0, 1)) is None  # type: ignore[arg-type]


# --- ipc batches ---------------------------------------------------------------


def test_to_worker_batch_round_trip() -> None:
    e1 = entry("alice", "fe0", 1, ("192.0.2.1", 4433))
    e2 = entry("bob", "fe1", 2**40, ("2001:db8::1", 65535))
    batch: list[ToWorker] = [
        Register(1, e1),
        Unregister(2, "alice", "fe0", 1),
        Lookup(3, "alice", "bob"),
        Rebuild(4, [e1, e2]),
        Rebuild(5, []),
        StatsRequest(6),
        Shutdown(7),
    ]
    data = encode_batch(batch)
    assert isinstance(data, bytes)
    back = decode_to_worker(data)
    assert back == batch
    assert [type(m) for m in back] == [type(m) for m in batch]
    reg = back[0]
    assert isinstance(reg, Register)
    assert isinstance(reg.entry.addr, tuple)
    assert isinstance(reg.entry.cert, bytes)


def test_from_worker_batch_round_trip() -> None:
    e = entry("alice")
    batch: list[FromWorker] = [
        Ready("route", 0, 1234),
        Ready("broadcast", 3, 99, IPC_VERSION + 1),
        Reply(1),
        Reply(2, wire.Code.NO_SUCH_PEER),
        Reply(3, 0, e),
        Reply(4, wire.Code.DUPLICATE_ID, e),
        StatsReply(5, {"entries": 1, "handled": 10}),
        StatsReply(6, {}),
    ]
    back = decode_from_worker(encode_batch(batch))
    assert back == batch
    assert [type(m) for m in back] == [type(m) for m in batch]
    assert back[0] == Ready("route", 0, 1234, IPC_VERSION)
    assert back[1] == Ready("broadcast", 3, 99, IPC_VERSION + 1)
    assert back[2] == Reply(1, 0, None)


def test_empty_batches() -> None:
    assert decode_to_worker(encode_batch([])) == []
    assert decode_from_worker(encode_batch([])) == []


def test_directory_replies_survive_the_wire() -> None:
    """What a worker does: decode a batch, handle each, encode the replies."""
    d = Directory()
    requests: list[ToWorker] = [
        Register(1, entry("alice")),
        Register(2, entry("alice", conn=5)),
        Lookup(3, "bob", "alice"),
        Lookup(4, "alice", "bob"),
        StatsRequest(5),
    ]
    replies: list[FromWorker] = []
    for m in decode_to_worker(encode_batch(requests)):
        r = d.handle(m)
        assert r is not None
        replies.append(r)
    back = decode_from_worker(encode_batch(replies))
    assert back == replies
    assert [getattr(r, "req", None) for r in back] == [1, 2, 3, 4, 5]
    codes = [r.code for r in back if isinstance(r, Reply)]
    assert codes == [0, wire.Code.DUPLICATE_ID, 0, wire.Code.NO_SUCH_PEER]


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x91\x93\xa5nope\x01", b"\x05"])
def test_malformed_batches_raise(data: bytes) -> None:
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode_to_worker(data)
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode_from_worker(data)
