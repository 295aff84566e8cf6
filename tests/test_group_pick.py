"""`GroupPicker`: which member a tell_group/ask_group goes to (no
Coordinator, no sockets)."""

from __future__ import annotations

import collections

import pytest

from conec_actors import wire
from conec_actors.client.group_pick import TELL_RUN, GroupPicker, LoadReporter, NotFollowed


def nothing_queued(member: str) -> int:
    return 0


def test_an_unfollowed_group_cannot_be_picked_from() -> None:
    p = GroupPicker()
    assert not p.follows("g")
    with pytest.raises(NotFollowed):
        p.pick("g", nothing_queued)
    with pytest.raises(NotFollowed):
        p.members("g")


def test_followed_lists_the_groups_to_follow_again_after_a_reconnect() -> None:
    p = GroupPicker()
    assert p.followed() == []
    p.view("g", ["a"])
    p.view("h", [])
    assert p.followed() == ["g", "h"]  # an empty view is still followed
    p.forget()
    assert p.followed() == []


def test_an_empty_group_gives_nobody() -> None:
    p = GroupPicker()
    p.view("g", [])
    assert p.follows("g") and p.pick("g", nothing_queued) is None


def test_idle_members_take_turns() -> None:
    p = GroupPicker()
    p.view("g", ["a", "b", "c"])
    assert [p.pick("g", nothing_queued) for _ in range(6)] == ["a", "b", "c"] * 2


def test_fewest_outstanding_asks_first() -> None:
    p = GroupPicker()
    p.view("g", ["a", "b", "c"])
    for m in ("a", "a", "b"):
        p.ask_sent(m)
    assert p.outstanding("a") == 2
    assert p.pick("g", nothing_queued) == "c"
    p.ask_sent("c")
    # b and c hold one each now; a two: a is never chosen.
    assert {p.pick("g", nothing_queued) for _ in range(4)} == {"b", "c"}
    p.ask_done("a")
    p.ask_done("a")
    assert p.outstanding("a") == 0
    assert p.pick("g", nothing_queued) == "a"


def test_then_fewest_tells_queued() -> None:
    p = GroupPicker()
    p.view("g", ["a", "b"])
    queued = {"a": 5, "b": 1}
    assert p.pick("g", queued.__getitem__) == "b"
    assert p.pick("g", queued.__getitem__) == "b"
    p.ask_sent("b")  # asks count before tells
    assert p.pick("g", queued.__getitem__) == "a"


def test_a_slow_member_gets_less() -> None:
    # Asks to "slow" stay outstanding four times longer than to the others.
    p = GroupPicker()
    p.view("g", ["slow", "b", "c", "d"])
    took: collections.Counter[str] = collections.Counter()
    inflight: list[tuple[int, str]] = []
    for tick in range(400):
        done = [x for x in inflight if x[0] <= tick]
        for x in done:
            inflight.remove(x)
            p.ask_done(x[1])
        while len(inflight) < 8:
            m = p.pick("g", nothing_queued)
            assert m is not None
            p.ask_sent(m)
            took[m] += 1
            inflight.append((tick + (40 if m == "slow" else 4), m))
    assert took["slow"] < sum(took.values()) / 4


def test_a_new_view_replaces_the_members_at_once() -> None:
    p = GroupPicker()
    p.view("g", ["a", "b"])
    members = ["b"]
    p.view("g", members)
    members.append("x")  # the picker keeps its own copy
    assert p.members("g") == ["b"]
    assert {p.pick("g", nothing_queued) for _ in range(3)} == {"b"}
    p.forget()
    assert not p.follows("g")


def test_an_answer_for_no_outstanding_ask_is_a_driver_bug() -> None:
    p = GroupPicker()
    with pytest.raises(ValueError):
        p.ask_done("a")


def test_reported_loads_add_to_the_senders_own() -> None:
    p = GroupPicker()
    p.view("g", ["a", "b"], [3, 0], [0, 9])
    assert p.reported("a") == (3, 0) and p.reported("x") == (0, 0)
    assert p.pick("g", nothing_queued) == "b"  # fewer asks beats fewer tells
    for _ in range(3):
        p.ask_sent("b")
    # a: 3 reported + 0 own; b: 0 + 3 own, more tells: a now.
    assert p.pick("g", nothing_queued) == "a"
    p.view("g", ["a", "b"], [0, 0], [0, 0])
    p.ask_done("b")
    assert p.pick("g", nothing_queued) == "a"


def test_a_view_without_loads_keeps_the_last_reported() -> None:
    p = GroupPicker()
    p.view("g", ["a", "b"], [4, 0], [0, 0])
    p.view("g", ["a", "b"])  # the reply to "follow" carries no loads
    assert p.reported("a") == (4, 0)
    p.view("g", ["a", "b"], [1], [1, 1])  # malformed lengths: ignored
    assert p.reported("a") == (4, 0)


def test_a_member_reports_only_changes() -> None:
    r = LoadReporter()
    assert r.sample(0, 0) is None  # idle is what the Coordinator assumes
    assert r.sample(2, 1) == wire.LoadReport(2, 1)
    assert r.sample(2, 1) is None
    assert r.sample(0, 0) == wire.LoadReport(0, 0)
    r.sample(3, 3)
    r.reset()
    assert r.sample(3, 3) == wire.LoadReport(3, 3)


def test_a_member_found_gone_is_not_picked_until_a_view_says_otherwise() -> None:
    p = GroupPicker()
    p.view("g", ["a", "b"])
    p.view("h", ["a"])
    p.gone("a")
    assert p.members("g") == ["b"] and p.members("h") == []
    assert p.pick("h", nothing_queued) is None
    p.gone("nobody")  # not a member anywhere: nothing changes
    p.view("g", ["a", "b"])
    assert p.members("g") == ["a", "b"]


def test_a_failed_send_does_not_undo_a_view_that_came_after_its_pick() -> None:
    p = GroupPicker()
    p.view("g", ["a", "b"])
    epoch = p.epoch
    assert p.pick("g", lambda m: 0) == "a"
    p.view("g", ["a", "b"])  # "a" came back (a new instance under the same id)
    p.gone("a", epoch)  # the send picked before that view failed
    assert p.members("g") == ["a", "b"]
    p.gone("a", p.epoch)  # a send after the latest view failed: drop it
    assert p.members("g") == ["b"]


def test_tells_that_queue_go_in_runs_then_to_the_least_queued() -> None:
    p = GroupPicker()
    p.view("g", ["a", "b", "c"])
    queued: collections.Counter[str] = collections.Counter()

    def tell() -> str:
        m = p.pick_tell("g", queued.__getitem__)
        assert m is not None
        queued[m] += 1  # the sender outpaces its writes: every tell queues
        return m

    assert [tell() for _ in range(TELL_RUN)] == ["a"] * TELL_RUN
    # "a" holds a run's worth now: the next run goes elsewhere, and so on
    assert [tell() for _ in range(TELL_RUN)] == ["b"] * TELL_RUN
    assert tell() == "c"


def test_tells_to_idle_lines_take_turns() -> None:
    p = GroupPicker()
    p.view("g", ["a", "b", "c"])
    # each tell is written at once: nothing queues, so no run starts
    assert [p.pick_tell("g", nothing_queued) for _ in range(6)] == ["a", "b", "c"] * 2


@pytest.mark.parametrize("change", ["view", "ask_sent", "ask_done", "gone"])
def test_a_change_a_pick_rests_on_ends_the_run(change: str) -> None:
    p = GroupPicker()
    p.view("g", ["a", "b"])
    p.ask_sent("b")
    queued = {"a": 0, "b": 0}
    assert p.pick_tell("g", queued.__getitem__) == "a"  # "b" has an ask outstanding
    queued["a"] = 5
    assert p.pick_tell("g", queued.__getitem__) == "a"  # the run goes on
    if change == "view":
        p.view("g", ["b"])  # "a" left: not one more tell to it
    elif change == "ask_sent":
        p.ask_sent("a")
        p.ask_sent("a")
    elif change == "ask_done":
        p.ask_done("b")  # "b" is idle now, "a" has 5 queued
    else:
        p.gone("a")
    assert p.pick_tell("g", queued.__getitem__) == "b"


def test_a_slow_member_loses_its_run_once_its_report_comes() -> None:
    p = GroupPicker()
    p.view("g", ["a", "b"])
    queued = {"a": 1, "b": 1}
    assert p.pick_tell("g", queued.__getitem__) == "a"
    p.view("g", ["a", "b"], asks=[0, 0], tells=[500, 0])  # "a" reports a full mailbox
    assert {p.pick_tell("g", queued.__getitem__) for _ in range(TELL_RUN)} == {"b"}
