"""Groups at the client: joining and leaving, and sending to one member.

Membership lives at the Coordinator (`coord.groups`). To send to a group the
client follows it: the first `tell_group`/`ask_group` to a name asks the
Coordinator for its members and to push every change (`GroupView`), and
`group_pick.GroupPicker` picks the least loaded member from that list, so
no message waits for the Coordinator. Then the ordinary `tell`/`ask` to the
member carries the message (so an ask to a member that goes away fails with
`PeerGone`).

A member reports its load (asks it has taken and not answered, envelopes in
its mailbox) to the Coordinator, which passes it on in the views: a task
samples it every `REPORT_INTERVAL` while the client belongs to a group.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .. import wire
from ..errors import ClientClosed, NoResponders, ProtocolError
from .coord_session import SessionState
from .group_pick import REPORT_INTERVAL, GroupPicker, LoadReporter, NotFollowed
from .link import CoordLink
from .mailbox import Mailbox


def check_name(name: object) -> str:
    """`name` if it is a valid group name, else `ValueError`."""
    if not isinstance(name, str) or not 1 <= len(name) <= wire.MAX_GROUP_NAME:
        raise ValueError(f"a group name is a str of 1-{wire.MAX_GROUP_NAME} characters, "
                         f"not {name!r:.80}")
    return name


def _check(reply: wire.GroupReply) -> None:
    if reply.code != 0:
        info = wire.CODES.get(reply.code)
        raise (info.error if info is not None else ProtocolError)(wire.describe(reply.code))


class Groups:
    """The groups one client belongs to and sends to."""

    def __init__(self, link: CoordLink, mailbox: Mailbox) -> None:
        self._link = link
        self._mailbox = mailbox
        self.picker = GroupPicker()
        #: group -> the "follow" request under way (first uses share it)
        self._following: dict[str, asyncio.Task[None]] = {}
        #: The groups this client belongs to (as far as it asked).
        self._joined: set[str] = set()
        self._reporter = LoadReporter()
        self._reporting: asyncio.Task[None] | None = None
        link.on_group_view = self._view

    def _view(self, view: wire.GroupView) -> None:
        if self.picker.follows(view.name) or view.name in self._following:
            self.picker.view(view.name, view.members, view.asks, view.tells)

    def rebind(self, link: CoordLink) -> None:
        """Carry on over `link` (reconnected): `restore` follows."""
        self._link = link
        link.on_group_view = self._view

    def suspend(self) -> None:
        """The Coordinator is gone and the client reconnects: keep the groups
        joined and the views (sends wait for their routes), stop reporting."""
        if self._reporting is not None:
            self._reporting.cancel()
            self._reporting = None

    async def restore(self) -> None:
        """Reconnected: join again the groups joined, follow again those
        followed (their views are then current), report again."""
        for name in sorted(self._joined):
            _check(await self._link.request_group("join", name))
        for name in self.picker.followed():
            reply = await self._link.request_group("follow", name)
            _check(reply)
            self.picker.view(name, reply.members)
        if self._joined and self._reporting is None \
                and self._link.session.state is SessionState.READY:
            self._reporting = asyncio.get_running_loop().create_task(self._report())

    def lost(self) -> None:
        """The Coordinator is gone: no member list is current any more."""
        self.picker.forget()
        self._joined.clear()
        if self._reporting is not None:
            self._reporting.cancel()
            self._reporting = None

    async def join(self, name: str) -> None:
        _check(await self._link.request_group("join", check_name(name)))
        self._joined.add(name)
        if self._reporting is None and self._link.session.state is SessionState.READY:
            self._reporting = asyncio.get_running_loop().create_task(self._report())

    async def leave(self, name: str) -> None:
        _check(await self._link.request_group("leave", check_name(name)))
        self._joined.discard(name)
        if not self._joined and self._reporting is not None:
            self._reporting.cancel()
            self._reporting = None
            self._reporter.reset()  # the Coordinator forgot our load with our last group

    async def _report(self) -> None:
        mailbox, link, reporter = self._mailbox, self._link, self._reporter
        while link.session.state is SessionState.READY:
            await asyncio.sleep(REPORT_INTERVAL)
            report = reporter.sample(mailbox.asks_taken, mailbox.queued)
            if report is not None:
                link.report_load(report.asks, report.tells)

    async def members(self, name: str) -> list[str]:
        reply = await self._link.request_group("members", check_name(name))
        _check(reply)
        return reply.members

    async def _follow(self, name: str) -> None:
        reply = await self._link.request_group("follow", name)
        _check(reply)
        if not self.picker.follows(name):  # a view may have come first: it is newer
            self.picker.view(name, reply.members)

    def pick_now(self, name: str, *, tell: bool = False) -> str | None:
        """The member of followed group `name` to send to next (no await: the
        per-message path), picked for a tell in runs (`GroupPicker.pick_tell`);
        None if `name` is not followed yet or has no members in the view
        (then `pick`, which asks the Coordinator)."""
        picker = self.picker
        try:
            if tell:
                member = picker.pick_tell(name, self._mailbox.backlog)
            else:
                member = picker.pick(name, self._mailbox.backlog)
        except (NotFollowed, TypeError):  # TypeError: an unhashable name (`pick` says)
            return None
        return member

    async def pick(self, name: str) -> str:
        """The member of `name` to send to next, following it first if
        needed; `NoResponders` at once if it has none."""
        member = self.pick_now(name)
        if member is not None:
            return member
        if not self.picker.follows(check_name(name)):
            task = self._following.get(name)
            if task is None:
                task = self._following[name] = asyncio.ensure_future(self._follow(name))
                task.add_done_callback(lambda _t: self._following.pop(name, None))
            await asyncio.shield(task)
            if not self.picker.follows(name):  # the Coordinator went meanwhile
                raise ClientClosed("lost the Coordinator")
        else:
            # An empty view may be behind a join (views come at most every
            # VIEW_INTERVAL): the Coordinator's word before NoResponders.
            epoch = self.picker.epoch
            members = await self.members(name)
            if members and self.picker.epoch == epoch:
                self.picker.view(name, members)
        member = self.picker.pick(name, self._mailbox.backlog)
        if member is None:
            raise NoResponders(f"group {name!r} has no members")
        return member

    async def tell_again(self, name: str, msg: Any, failed: str, epoch: int) -> None:
        """`tell` after the mailbox said `failed` (picked at `epoch`) is not
        connected (`NoResponders`: nothing was sent)."""
        retried: set[str] = set()
        member: str | None = failed
        while True:
            if member is None:
                member = await self.pick(name)
                epoch = self.picker.epoch
            elif self._drop(member, epoch, retried):
                member = None
                continue
            try:
                return await self._mailbox.tell(member, msg)
            except NoResponders:
                pass

    def _drop(self, member: str, epoch: int, retried: set[str]) -> bool:
        """A send to `member` raised `NoResponders`. The mailbox says a route
        it found dead once, then starts afresh: the first time, the member
        may be a new instance under the same id, so try it once more (False);
        the second, stop picking it (True)."""
        if member not in retried:
            retried.add(member)
            return False
        self.picker.gone(member, epoch)
        return True

    async def ask(self, name: str, msg: Any, timeout: float | None,
                  reply_type: Any) -> Any:
        picker = self.picker
        retried: set[str] = set()
        member: str | None = None
        epoch = 0
        while True:
            if member is None:
                member = self.pick_now(name) or await self.pick(name)
                epoch = picker.epoch
            sent = member
            picker.ask_sent(sent)
            try:
                return await self._mailbox.ask(sent, msg, timeout, reply_type=reply_type)
            except NoResponders:  # not sent: once more, then another member
                if self._drop(sent, epoch, retried):
                    member = None
            finally:
                picker.ask_done(sent)
