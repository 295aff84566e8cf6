"""Tests for conec_actors.demo_checks: the demo's checked messages, figures
and summary, without running the demo."""

from __future__ import annotations

import io

from conec_actors.demo_checks import (
    HEADER,
    MAX_PROBLEMS,
    MAX_SIZE,
    MIN_SIZE,
    Flows,
    Printer,
    Room,
    check_message,
    client_names,
    make_message,
    random_size,
    summary,
    table,
)


def test_messages_check_their_order_and_contents() -> None:
    msg = make_message(5, 100)
    assert len(msg) == 100 and check_message(msg, 5) is None
    assert "expected message 4, got 5" in (check_message(msg, 4) or "")
    bad = msg[:-1] + bytes([msg[-1] ^ 1])
    assert "checksum" in (check_message(bad, 5) or "")
    assert "only 3 bytes" in (check_message(b"abc", 0) or "")
    assert len(make_message(1, 0)) == HEADER.size


def test_client_names() -> None:
    assert client_names(3) == ["alice", "bob", "carol"]
    assert client_names(21)[-1] == "client-21"


def test_random_sizes_stay_in_range() -> None:
    import random

    rng = random.Random(1)
    assert all(MIN_SIZE <= random_size(rng) <= MAX_SIZE for _ in range(1000))


def test_a_flow_is_ok_only_when_everything_arrived_and_ended() -> None:
    flows = Flows()
    f = flows.get("alice", "bob", "proxied", 0)
    assert flows.get("alice", "bob", "proxied", 0) is f and list(flows) == [f]
    f.sent_msgs = f.recv_msgs = 2
    f.sent_bytes = f.recv_bytes = 200
    assert not f.ok
    f.finished = f.ended_clean = True
    assert f.ok
    for i in range(MAX_PROBLEMS + 2):
        f.problem(f"p{i}")
    assert not f.ok and f.problem_count == MAX_PROBLEMS + 2
    assert len(f.problems) == MAX_PROBLEMS


def test_the_room_checks_one_order_for_everyone() -> None:
    room = Room(sent={"a": 2, "b": 1})
    order = [("a", 0), ("b", 0), ("a", 1)]
    room.heard = {"a": list(order), "b": list(order)}
    assert room.check()
    room.heard["b"] = [order[1], order[0], order[2]]
    assert not room.check() and room.problems == ["members heard different orders"]
    lost = Room(sent={"a": 2}, heard={"a": [("a", 1)]})
    assert not lost.check()


def test_table_aligns_columns() -> None:
    assert table([["x", "1"], ["long", "22"]], right={1}) == ["  x      1", "  long  22"]


def test_summary_passes_and_fails() -> None:
    flows = Flows()
    f = flows.get("alice", "bob", "proxied", 0)
    f.sent_msgs = f.recv_msgs = 1
    f.sent_bytes = f.recv_bytes = 10
    f.finished = f.ended_clean = True
    stats = {"messages_forwarded": 1, "bytes_forwarded": 10}
    out = io.StringIO()
    assert summary(flows, ["alice", "bob"], stats, 1.0, [], Printer(out), False)
    assert "checks: all 1 streams ok" in out.getvalue()
    f.problem("lost")
    out = io.StringIO()
    assert not summary(flows, ["alice", "bob"], stats, 1.0, [], Printer(out), False)
    assert "alice -> bob proxied #0: lost" in out.getvalue()
