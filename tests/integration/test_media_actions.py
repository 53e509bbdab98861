"""Attachments meet groups, disappearing timers, view-once and delete for everyone."""

from __future__ import annotations

from pathlib import Path

import pytest

from bisik.client import AttachmentError, ManualClock, TimerChanged
from tests.conftest import ClientFactory, RunningServer, next_event
from tests.integration.test_attachments import blob_files, received_attachment, write_random
from tests.integration.test_groups import linked, until


async def test_files_in_a_group(
    make_client: ClientFactory, server: RunningServer, tmp_path: Path
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    carol = await make_client("carol")
    b_in, c_in = bob.subscribe(), carol.subscribe()
    group = await alice.create_group("Photos", ["bob", "carol"])
    src = tmp_path / "notes.bin"
    digest = write_random(src, 300_000)
    sent = await alice.send_file("#Photos", src, caption="the notes")
    for inbox, client in ((b_in, bob), (c_in, carol)):
        got = await received_attachment(inbox)
        assert (got.conversation, got.body) == (f"#{group.group_id}", "the notes")
        path = await client.download_attachment(got.id, tmp_path / f"{client.username}.bin")
        assert path.read_bytes()[:64] == src.read_bytes()[:64] and digest
    assert sent.attachment is not None and len(blob_files(server)) == 1


async def test_disappearing_file_and_its_blob_go(
    make_client: ClientFactory, server: RunningServer, tmp_path: Path
) -> None:
    a_clock, b_clock = ManualClock(), ManualClock()
    alice = await make_client("alice", clock=a_clock)
    bob = await make_client("bob", clock=b_clock)
    b_in = bob.subscribe()
    alice.set_timer("bob", 30)
    await next_event(b_in, TimerChanged)
    src = tmp_path / "secret.bin"
    write_random(src, 50_000)
    sent = await alice.send_file("bob", src)
    got = await received_attachment(b_in)
    assert got.expires_in == 30_000
    saved = await bob.download_attachment(got.id)  # into bob's profile
    assert saved.exists() and len(blob_files(server)) == 1
    row = await server.services.blobs._store.get(got.attachment.blob_id)
    assert row is not None and row.ttl_ms == 60_000  # the server drops it by the hard cap

    a_clock.advance(31)
    assert alice.expire_now() == 1
    await until(lambda: blob_files(server) == [])  # the uploader deletes it at once
    b_clock.advance(61)
    assert bob.expire_now() == 1
    assert not saved.exists()
    assert bob.attachment(got.id) is None and sent.id


async def test_view_once(make_client: ClientFactory, server: RunningServer, tmp_path: Path) -> None:
    alice = await make_client("alice")
    clock = ManualClock()
    bob = await make_client("bob", clock=clock)
    phone = await linked(bob, tmp_path / "bob-phone")
    b_in, p_in = bob.subscribe(), phone.subscribe()
    src = tmp_path / "once.bin"
    write_random(src, 20_000)
    sent = await alice.send_file("bob", src, view_once=True)
    got = await received_attachment(b_in)
    await received_attachment(p_in)
    assert got.view_once and got.expires_at is not None  # 14 days unopened at most
    with pytest.raises(AttachmentError, match="recipients"):
        await alice.download_attachment(sent.id, tmp_path / "mine.bin")
    opened = await bob.download_attachment(got.id, tmp_path / "ignored.bin")
    assert opened.read_bytes() == src.read_bytes()
    assert opened.is_relative_to(tmp_path / "homes" / "bob")  # kept inside the profile
    with pytest.raises(AttachmentError, match="already opened"):
        await bob.download_attachment(got.id)
    # bob's other device forgets it at once; this one after the viewing window.
    await until(lambda: phone.attachment(got.id) is None)
    clock.advance(5 * 60 + 1)
    assert bob.expire_now() == 1
    assert not opened.exists() and bob.attachment(got.id) is None
    await phone.close()


async def test_delete_for_everyone_deletes_the_blob(
    make_client: ClientFactory, server: RunningServer, tmp_path: Path
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    b_in = bob.subscribe()
    src = tmp_path / "oops.bin"
    write_random(src, 10_000)
    sent = await alice.send_file("bob", src)
    got = await received_attachment(b_in)
    alice.delete_message(sent.id, everyone=True)
    await until(lambda: blob_files(server) == [])
    await until(lambda: bob.history("alice")[0].deleted)
    assert bob.attachment(got.id) is None
