"""Groups: who is in which group, with which role.

Every membership change first bumps the group's version: that takes the
group's write lock (a row lock on PostgreSQL, the database lock on SQLite)
before anything is checked, so two admins changing members at once are
serialised and both see the other's change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bisik.server.stores.schema import devices, group_members, groups, users

ADMIN = "admin"
MEMBER = "member"


class GroupNotFound(Exception):
    pass


class NotAMember(Exception):
    pass


class NotAnAdmin(Exception):
    pass


class TooManyMembers(Exception):
    pass


@dataclass(frozen=True)
class MemberRow:
    username: str
    role: str
    added_at: int


@dataclass(frozen=True)
class GroupRow:
    group_id: str
    version: int
    created_at: int
    members: list[MemberRow]


@dataclass(frozen=True)
class Change:
    """A membership change as it was applied (``version`` is the new one)."""

    version: int
    members: list[str]
    changed: list[str]


class GroupStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self, group_id: str, creator_pk: int, member_pks: Iterable[int], now: int
    ) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(insert(groups).values(id=group_id, created_at=now, version=1))
            rows = [{"user_id": creator_pk, "role": ADMIN}] + [
                {"user_id": pk, "role": MEMBER}
                for pk in dict.fromkeys(member_pks)
                if pk != creator_pk
            ]
            await conn.execute(
                insert(group_members), [{**r, "group_id": group_id, "added_at": now} for r in rows]
            )

    async def user_pks(self, usernames: Iterable[str]) -> dict[str, int]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(users.c.username, users.c.id).where(users.c.username.in_(set(usernames)))
            )
            return {str(u): int(pk) for u, pk in rows.all()}

    async def get(self, group_id: str) -> GroupRow | None:
        async with self._engine.connect() as conn:
            group = (
                await conn.execute(
                    select(groups.c.version, groups.c.created_at).where(groups.c.id == group_id)
                )
            ).first()
            if group is None:
                return None
            members = await self._members(conn, group_id)
        return GroupRow(group_id, int(group[0]), int(group[1]), members)

    async def _members(self, conn: AsyncConnection, group_id: str) -> list[MemberRow]:
        rows = (
            await conn.execute(
                select(users.c.username, group_members.c.role, group_members.c.added_at)
                .join_from(group_members, users, group_members.c.user_id == users.c.id)
                .where(group_members.c.group_id == group_id)
                .order_by(group_members.c.added_at, users.c.username)
            )
        ).all()
        return [MemberRow(str(u), str(r), int(a)) for u, r, a in rows]

    async def version(self, group_id: str) -> int | None:
        async with self._engine.connect() as conn:
            version = (
                await conn.execute(select(groups.c.version).where(groups.c.id == group_id))
            ).scalar()
        return None if version is None else int(version)

    async def role(self, group_id: str, user_pk: int) -> str | None:
        async with self._engine.connect() as conn:
            return await self._role(conn, group_id, user_pk)

    async def _role(self, conn: AsyncConnection, group_id: str, user_pk: int) -> str | None:
        role = (
            await conn.execute(
                select(group_members.c.role).where(
                    group_members.c.group_id == group_id, group_members.c.user_id == user_pk
                )
            )
        ).scalar()
        return None if role is None else str(role)

    async def groups_of(self, user_pk: int) -> list[tuple[str, int, str]]:
        """``(group_id, version, role)`` of every group the user is in."""
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(groups.c.id, groups.c.version, group_members.c.role)
                    .join_from(group_members, groups, group_members.c.group_id == groups.c.id)
                    .where(group_members.c.user_id == user_pk)
                    .order_by(groups.c.created_at)
                )
            ).all()
        return [(str(g), int(v), str(r)) for g, v, r in rows]

    async def member_pks(self, group_id: str, user_pks: Iterable[int]) -> set[int]:
        """Which of ``user_pks`` are members of the group."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(group_members.c.user_id).where(
                    group_members.c.group_id == group_id,
                    group_members.c.user_id.in_(list(set(user_pks))),
                )
            )
            return {int(pk) for pk in rows.scalars()}

    async def readable_from(self, group_id: str, username: str, device_id: str) -> int | None:
        """When a current member's current device could start reading the group."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(group_members.c.added_at, devices.c.created_at)
                    .join_from(devices, users, devices.c.user_id == users.c.id)
                    .join(group_members, group_members.c.user_id == users.c.id)
                    .where(
                        group_members.c.group_id == group_id,
                        users.c.username == username,
                        devices.c.device_id == device_id,
                        devices.c.revoked_at.is_(None),
                    )
                )
            ).first()
        return None if row is None else max(int(row[0]), int(row[1]))

    async def member_devices(self, group_id: str) -> list[int]:
        """Primary keys of every current device of every member."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(devices.c.id)
                .join_from(devices, group_members, devices.c.user_id == group_members.c.user_id)
                .where(group_members.c.group_id == group_id, devices.c.revoked_at.is_(None))
                .order_by(devices.c.id)
            )
            return [int(pk) for pk in rows.scalars()]

    async def add(
        self, group_id: str, actor_pk: int, user_pks: Iterable[int], now: int, cap: int
    ) -> Change:
        """Add users as members (an admin only); users already in are skipped.

        Raises ``TooManyMembers`` if the group would have more than ``cap``.
        """
        async with self._engine.begin() as conn:
            version = await self._lock(conn, group_id)
            await self._require_admin(conn, group_id, actor_pk)
            present = {m.username for m in await self._members(conn, group_id)}
            wanted = list(dict.fromkeys(user_pks))
            names = dict(
                (
                    await conn.execute(
                        select(users.c.id, users.c.username).where(users.c.id.in_(wanted))
                    )
                ).all()
            )
            new = [pk for pk in wanted if pk in names and names[pk] not in present]
            if len(present) + len(new) > cap:
                raise TooManyMembers
            if new:
                await conn.execute(
                    insert(group_members),
                    [
                        {"group_id": group_id, "user_id": pk, "role": MEMBER, "added_at": now}
                        for pk in new
                    ],
                )
            members = [m.username for m in await self._members(conn, group_id)]
        return Change(version, members, [str(names[pk]) for pk in new])

    async def remove(self, group_id: str, actor_pk: int, target_pk: int) -> Change:
        """Remove a member (an admin, or the member themself: leaving).

        A group left without an admin makes its longest-standing member admin;
        a group left without members is deleted.
        """
        async with self._engine.begin() as conn:
            version = await self._lock(conn, group_id)
            if actor_pk != target_pk:
                await self._require_admin(conn, group_id, actor_pk)
            target = await self._role(conn, group_id, target_pk)
            if target is None:
                raise NotAMember
            name = (
                await conn.execute(select(users.c.username).where(users.c.id == target_pk))
            ).scalar_one()
            await conn.execute(
                delete(group_members).where(
                    group_members.c.group_id == group_id, group_members.c.user_id == target_pk
                )
            )
            members = await self._members(conn, group_id)
            if not members:
                await conn.execute(delete(groups).where(groups.c.id == group_id))
            elif not any(m.role == ADMIN for m in members):
                await conn.execute(
                    update(group_members)
                    .where(
                        group_members.c.group_id == group_id,
                        group_members.c.user_id
                        == select(users.c.id)
                        .where(users.c.username == members[0].username)
                        .scalar_subquery(),
                    )
                    .values(role=ADMIN)
                )
        return Change(version, [m.username for m in members], [str(name)])

    async def promote(self, group_id: str, actor_pk: int, target_pk: int) -> Change:
        async with self._engine.begin() as conn:
            version = await self._lock(conn, group_id)
            await self._require_admin(conn, group_id, actor_pk)
            if await self._role(conn, group_id, target_pk) is None:
                raise NotAMember
            await conn.execute(
                update(group_members)
                .where(group_members.c.group_id == group_id, group_members.c.user_id == target_pk)
                .values(role=ADMIN)
            )
            members = await self._members(conn, group_id)
        return Change(version, [m.username for m in members], [])

    async def _lock(self, conn: AsyncConnection, group_id: str) -> int:
        version = (
            await conn.execute(
                update(groups)
                .where(groups.c.id == group_id)
                .values(version=groups.c.version + 1)
                .returning(groups.c.version)
            )
        ).scalar()
        if version is None:
            raise GroupNotFound
        return int(version)

    async def _require_admin(self, conn: AsyncConnection, group_id: str, actor_pk: int) -> None:
        role = await self._role(conn, group_id, actor_pk)
        if role is None:
            raise NotAMember
        if role != ADMIN:
            raise NotAnAdmin
