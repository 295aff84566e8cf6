"""`GroupBook`: group membership and followers at the front-end (no
Coordinator, no sockets)."""

from __future__ import annotations

import pytest

from conec_actors import wire
from conec_actors.coord import groups
from conec_actors.coord.groups import GroupBook, check_name
from conec_actors.errors import ProtocolError


def test_join_and_leave_change_the_members_in_joining_order() -> None:
    book = GroupBook()
    assert book.members("g") == [] and len(book) == 0
    assert book.join("b", "g") == (0, True)
    assert book.join("a", "g") == (0, True)
    assert book.join("a", "g") == (0, False)  # twice: nothing changes
    assert book.members("g") == ["b", "a"] and book.groups_of("a") == {"g"}
    assert book.leave("b", "g") is True
    assert book.leave("b", "g") is False  # not a member any more
    assert book.leave("a", "nope") is False
    assert book.members("g") == ["a"]
    assert book.leave("a", "g") is True
    assert book.members("g") == [] and len(book) == 0 and book.groups_of("a") == set()


def test_a_member_that_goes_leaves_every_group() -> None:
    book = GroupBook()
    book.join("a", "g1")
    book.join("a", "g2")
    book.join("b", "g2")
    assert book.member_gone("a") == ["g1", "g2"]
    assert book.members("g1") == [] and book.members("g2") == ["b"]
    assert book.member_gone("a") == []  # nothing left


def test_too_many_groups_for_one_member(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(groups, "MAX_GROUPS", 2)
    book = GroupBook()
    book.join("a", "g1")
    book.join("a", "g2")
    assert book.join("a", "g3") == (wire.Code.TOO_MANY_GROUPS, False)
    assert book.join("a", "g1") == (0, False)  # one it holds: still fine
    assert book.members("g3") == []
    book.leave("a", "g1")
    assert book.join("a", "g3") == (0, True)


def test_a_full_group_refuses_more_members(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(groups, "MAX_MEMBERS", 2)
    book = GroupBook()
    book.join("a", "g")
    book.join("b", "g")
    assert book.join("c", "g") == (wire.Code.GROUP_FULL, False)
    assert book.members("g") == ["a", "b"] and book.groups_of("c") == set()
    book.member_gone("a")
    assert book.join("c", "g") == (0, True)


def test_followers_until_their_connection_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(groups, "MAX_FOLLOWS", 2)
    book = GroupBook()
    assert book.follow(1, "g") == 0
    assert book.follow(1, "g") == 0  # twice is fine
    assert book.follow(2, "g") == 0
    assert sorted(book.followers("g")) == [1, 2]
    # Following needs no members (an empty group is followed until it fills).
    assert book.members("g") == []
    assert book.follow(1, "h") == 0
    assert book.follow(1, "i") == wire.Code.TOO_MANY_GROUPS
    book.follower_gone(1)
    assert book.followers("g") == [2] and book.followers("h") == []
    book.follower_gone(1)  # twice: nothing
    book.follower_gone(2)
    assert book.followers("g") == []


@pytest.mark.parametrize("bad", ["", "x" * (wire.MAX_GROUP_NAME + 1), 7, None])
def test_group_names_are_checked_like_broadcast_names(bad: object) -> None:
    with pytest.raises(ProtocolError):
        check_name(bad)


def test_a_valid_name_passes() -> None:
    assert check_name("x" * wire.MAX_GROUP_NAME) == "x" * wire.MAX_GROUP_NAME


def test_load_reports_mark_followed_groups_dirty_once() -> None:
    book = GroupBook()
    book.join("a", "g")
    book.join("a", "h")
    book.join("b", "g")
    assert book.report("a", 1, 2) is False  # nobody follows g or h: nothing to push
    assert book.take_dirty() == []
    book.follow(9, "g")
    assert book.report("a", 3, 0) is True  # the driver arms its timer
    assert book.report("b", 1, 1) is False  # g is dirty already (the timer is armed)
    assert book.report("a", 3, 0) is False  # unchanged
    assert book.take_dirty() == ["g"] and book.take_dirty() == []
    assert book.view("g") == wire.GroupView("g", ["a", "b"], [3, 1], [0, 1])
    assert book.view("h") == wire.GroupView("h", ["a"], [3], [0])


def test_a_client_in_no_group_has_no_load() -> None:
    book = GroupBook()
    book.follow(9, "g")
    assert book.report("a", 5, 5) is False
    book.join("a", "g")
    assert book.view("g") == wire.GroupView("g", ["a"], [0], [0])
    book.report("a", 5, 5)
    book.leave("a", "g")
    book.join("a", "g")  # left its last group: its load was forgotten
    assert book.view("g") == wire.GroupView("g", ["a"], [0], [0])
    book.report("a", 5, 5)
    book.member_gone("a")
    book.join("a", "g")
    assert book.view("g").asks == [0]


def test_a_dirty_group_nobody_follows_any_more_is_not_pushed() -> None:
    book = GroupBook()
    book.join("a", "g")
    book.follow(9, "g")
    book.report("a", 1, 0)
    book.follower_gone(9)
    assert book.take_dirty() == []


def test_a_negative_load_is_refused() -> None:
    book = GroupBook()
    book.join("a", "g")
    with pytest.raises(ProtocolError):
        book.report("a", -1, 0)
