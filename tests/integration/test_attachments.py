"""Encrypted attachments through a real server: round trips, resume, corruption,
EXIF, quotas, GC, access rules, the S3 backend (moto on loopback) and a canary."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from bisik.client import AttachmentError, Client, MessageReceived, ProtocolError
from bisik.server import free_port
from tests.conftest import ClientFactory, RunningServer, next_event

MiB = 1024 * 1024


def write_random(path: Path, size: int, block: int = 4 * MiB) -> str:
    """Write ``size`` random-ish bytes in blocks; returns their SHA-256 (hex)."""
    digest = hashlib.sha256()
    seed = os.urandom(block)
    with path.open("wb") as f:
        done = 0
        while done < size:
            # Cheap, non-repeating blocks: a counter prefix over one random block.
            piece = (done.to_bytes(8, "big") + seed)[: min(block, size - done)]
            f.write(piece)
            digest.update(piece)
            done += len(piece)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def blob_files(server: RunningServer) -> list[Path]:
    root = server.config.data_dir / "blobs"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


async def received_attachment(inbox: asyncio.Queue[Any]) -> Any:
    while True:
        event = await next_event(inbox, MessageReceived)
        if event.message.attachment is not None:
            return event.message


async def reconnected(client: Client) -> None:
    """Wait for a client's socket to be back after a cut, so that closing it does
    not race its reconnect (Engine.IO leaks the HTTP session of a cut-short one)."""
    async with asyncio.timeout(20):
        while not client.connected:
            await asyncio.sleep(0.05)


def jpeg_with_exif(path: Path) -> None:
    image = Image.new("RGB", (64, 48), (10, 120, 200))
    for x in range(32):
        image.putpixel((x, 5), (255, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to show upright
    exif[0x010F] = "CanaryCam"  # camera make
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)}  # GPS
    image.save(path, "JPEG", exif=exif.tobytes(), quality=90)


async def test_file_round_trip_with_caption_and_history(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    inbox = bob.subscribe()
    src = tmp_path / "notes.txt"
    src.write_bytes(b"meeting at noon\n" * 5000)
    progress: list[tuple[int, int]] = []
    sent = await alice.send_file(
        "bob", src, caption="the notes", progress=lambda d, t: progress.append((d, t))
    )
    await alice.wait_sent(sent.id, timeout=10)
    assert progress and progress[-1][0] == progress[-1][1]

    got = await received_attachment(inbox)
    info = got.attachment
    assert got.body == "the notes"
    assert (info.name, info.size, info.kind, info.mime) == (
        "notes.txt",
        src.stat().st_size,
        "file",
        "text/plain",
    )
    (tmp_path / "dl").mkdir()
    out = await bob.download_attachment(got.id, tmp_path / "dl")
    assert out == tmp_path / "dl" / "notes.txt"
    assert out.read_bytes() == src.read_bytes()

    row = bob.history("alice")[-1].to_json()
    assert row["attachment"]["name"] == "notes.txt"
    assert "key" not in row["attachment"] and "digest" not in row["attachment"]
    # The sender's own history carries it too, pointing at the original file.
    mine = alice.attachment(sent.id)
    assert mine is not None and mine[1] == src.resolve()


async def test_image_metadata_and_exif_stripped(make_client: ClientFactory, tmp_path: Path) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    inbox = bob.subscribe()
    src = tmp_path / "holiday.jpg"
    jpeg_with_exif(src)
    original = src.read_bytes()
    assert b"CanaryCam" in original

    await alice.send_file("bob", src)
    got = await received_attachment(inbox)
    info = got.attachment
    # Rotated by the EXIF orientation, then stripped: 48 x 64, upright.
    assert (info.kind, info.mime, info.width, info.height) == ("image", "image/jpeg", 48, 64)
    assert info.blurhash and len(info.blurhash) >= 6
    thumb = Image.open(io.BytesIO(base64.b64decode(info.thumbnail)))
    assert thumb.format == "JPEG" and max(thumb.size) <= 160
    assert src.read_bytes() == original  # the sender's file is untouched

    out = await bob.download_attachment(got.id, tmp_path / "bob-holiday.jpg")
    data = out.read_bytes()
    assert b"CanaryCam" not in data and b"Exif" not in data
    with Image.open(out) as image:
        assert image.size == (48, 64)
        assert not image.getexif()
    assert got.to_json()["attachment"]["width"] == 48


async def test_keep_metadata_when_asked(make_client: ClientFactory, tmp_path: Path) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    inbox = bob.subscribe()
    src = tmp_path / "raw.jpg"
    jpeg_with_exif(src)
    await alice.send_file("bob", src, strip_metadata=False)
    got = await received_attachment(inbox)
    out = await bob.download_attachment(got.id, tmp_path / "kept.jpg")
    assert out.read_bytes() == src.read_bytes()


async def test_voice_note_carries_duration_and_waveform(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    pytest.importorskip("av", reason="PyAV is not installed")
    from tests.unit.client.test_media import make_wav

    alice = await make_client("alice")
    bob = await make_client("bob")
    inbox = bob.subscribe()
    src = tmp_path / "voice.wav"
    make_wav(src, seconds=1.5)
    await alice.send_file("bob", src)
    got = await received_attachment(inbox)
    info = got.attachment
    assert (info.kind, info.duration_ms, len(info.waveform)) == ("voice", 1500, 64)
    out = await bob.download_attachment(got.id, tmp_path / "heard.wav")
    assert out.read_bytes() == src.read_bytes()
    assert got.to_json()["attachment"]["duration_ms"] == 1500


class CuttingProxy:
    """A loopback TCP proxy that cuts every open connection once, after
    ``cut_after`` bytes went upstream in total; later connections pass freely."""

    def __init__(self, upstream_port: int, cut_after: int) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.forwarded = 0
        self.cuts = 0
        self.port = free_port()
        self._conns: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._conns):
            w.transport.abort()
        await self._server.wait_closed()

    def _cut(self) -> None:
        self.cuts += 1
        for w in list(self._conns):
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool):
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(256 * 1024):
                writer.write(data)
                await writer.drain()
                if up:
                    before = self.forwarded
                    self.forwarded += len(data)
                    if self.cuts == 0 and before < self.cut_after <= self.forwarded:
                        self._cut()
                        return
        writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._conns |= {writer, up_writer}
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, True), self._pipe(up_reader, writer, False)
            )
        finally:
            self._conns -= {writer, up_writer}


# Tests take this fixture before ``make_client``: clients close before their proxy
# goes, or a reconnect attempt through the dead proxy would leak its HTTP session.
@pytest.fixture
async def cutting_proxy(server: RunningServer) -> AsyncIterator[Callable[[int], Awaitable[Any]]]:
    proxies: list[CuttingProxy] = []

    async def make(cut_after: int) -> CuttingProxy:
        proxy = CuttingProxy(server.port, cut_after)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.stop()


async def test_large_file_resumes_after_a_cut_connection(
    server: RunningServer,
    cutting_proxy: Callable[[int], Awaitable[CuttingProxy]],
    make_client: ClientFactory,
    tmp_path: Path,
) -> None:
    size = 200 * MiB + 12345
    src = tmp_path / "big.bin"
    expected = write_random(src, size)
    proxy = await cutting_proxy(90 * MiB)
    alice = await make_client("alice", server_url=proxy.url)
    bob = await make_client("bob")
    inbox = bob.subscribe()
    offsets: list[int] = []
    sent = await alice.send_file("bob", src, progress=lambda done, total: offsets.append(done))
    await alice.wait_sent(sent.id, timeout=30)
    assert proxy.cuts == 1
    # Resumed from the server's last stored part, never from zero.
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    assert offsets[-1] == sent.attachment.size + 16 * -(-size // (64 * 1024))
    # Re-sent at most the part that was in flight when the connection was cut.
    assert proxy.forwarded < offsets[-1] + 2 * server.config.blob_part_bytes

    got = await received_attachment(inbox)
    out = await bob.download_attachment(got.id, tmp_path / "big-copy.bin")
    assert sha256_file(out) == expected
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".part")]
    await reconnected(alice)


async def test_download_resumes_after_a_cut_connection(
    server: RunningServer,
    cutting_proxy: Callable[[int], Awaitable[CuttingProxy]],
    make_client: ClientFactory,
    tmp_path: Path,
) -> None:
    src = tmp_path / "medium.bin"
    expected = write_random(src, 24 * MiB)
    alice = await make_client("alice")
    sent = await alice.send_file("alice", src)
    proxy = await cutting_proxy(10**12)  # cut by hand below
    bob = await make_client("bob", server_url=proxy.url)
    info = alice.attachment(sent.id)
    assert info is not None

    # Cut bob's download midway: abort his connections after 8 MiB came down.
    seen: list[int] = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if proxy.cuts == 0 and done >= 8 * MiB:
            proxy._cut()

    from bisik.client._attachments import download

    out = await download(bob.transport, info[0], tmp_path / "copy.bin", progress)
    assert proxy.cuts == 1
    assert sha256_file(out) == expected
    assert seen == sorted(seen)
    await reconnected(bob)


async def test_corrupted_swapped_or_truncated_blob_is_rejected(
    make_client: ClientFactory, server: RunningServer, tmp_path: Path
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    inbox = bob.subscribe()
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    write_random(a, 300_000)
    write_random(b, 300_000)
    await alice.send_file("bob", a)
    first = await received_attachment(inbox)
    await alice.send_file("bob", b)
    second = await received_attachment(inbox)
    path_of = {p.name: p for p in blob_files(server)}
    blob_a = path_of[first.attachment.blob_id]
    blob_b = path_of[second.attachment.blob_id]
    dest = tmp_path / "out"
    dest.mkdir()

    good = blob_a.read_bytes()
    flipped = bytearray(good)
    flipped[100_000] ^= 0x01
    blob_a.write_bytes(bytes(flipped))
    with pytest.raises(AttachmentError, match="corrupted"):
        await bob.download_attachment(first.id, dest)

    # Another blob of the same size (a server swapping files).
    blob_a.write_bytes(blob_b.read_bytes())
    with pytest.raises(AttachmentError, match=r"corrupted|digest"):
        await bob.download_attachment(first.id, dest)

    # Truncated on disk: the server cannot serve the promised length.
    blob_a.write_bytes(good[:200_000])
    with pytest.raises(AttachmentError):
        await bob.download_attachment(first.id, dest)
    assert list(dest.iterdir()) == []  # nothing shown, nothing saved

    blob_a.write_bytes(good)
    out = await bob.download_attachment(first.id, dest)
    assert out.read_bytes() == a.read_bytes()


async def test_quota_size_limit_and_delete(
    server_factory: Callable[..., Awaitable[RunningServer]], tmp_path: Path
) -> None:
    from bisik.client import KdfParams

    server = await server_factory(blob_quota_bytes=1 * MiB, max_blob_bytes=700_000)
    kdf = KdfParams(time_cost=1, memory_cost_kib=8 * 1024, parallelism=1)
    alice = await Client.create_account(
        tmp_path / "alice", server_url=server.url, username="alice", password="pw", kdf=kdf
    )
    try:
        await alice.connect()
        await asyncio.wait_for(alice.synced.wait(), 10)
        f1, f2, huge = tmp_path / "1.bin", tmp_path / "2.bin", tmp_path / "huge.bin"
        for f, size in ((f1, 600_000), (f2, 600_000), (huge, 800_000)):
            write_random(f, size)
        with pytest.raises(ProtocolError) as too_large:
            await alice.send_file("alice", huge)
        assert too_large.value.code == "blob_too_large"
        first = await alice.send_file("alice", f1)
        with pytest.raises(ProtocolError) as quota:
            await alice.send_file("alice", f2)
        assert quota.value.code == "quota_exceeded"
        usage = await alice.attachment_usage()
        assert usage["quota"] == MiB and 600_000 < usage["used"] < 700_000

        await alice.delete_attachment(first.id)
        assert alice.attachment(first.id) is None
        assert (await alice.attachment_usage())["used"] == 0
        assert blob_files(server) == []
        await alice.send_file("alice", f2)
    finally:
        await alice.close()


async def test_expired_blobs_and_abandoned_uploads_are_collected(
    make_client: ClientFactory,
    server: RunningServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    inbox = bob.subscribe()
    src = tmp_path / "old.bin"
    write_random(src, 100_000)
    await alice.send_file("bob", src)
    got = await received_attachment(inbox)
    # An upload that was started and never finished.
    abandoned = await alice.transport.request("POST", "/v1/blobs", {"size": 5000})
    assert len(blob_files(server)) == 2

    blobs = server.services.blobs
    assert await blobs.collect_garbage() == 0
    import bisik.server.handlers.blobs as handler_module

    real_now = handler_module.now_ms
    monkeypatch.setattr(handler_module, "now_ms", lambda: real_now() + 2 * 86_400_000)
    assert await blobs.collect_garbage() == 1  # the abandoned upload (24 h)
    assert [p.name for p in blob_files(server)] == [got.attachment.blob_id]
    with pytest.raises(ProtocolError) as gone:
        await alice.transport.request("GET", f"/v1/blobs/{abandoned['blob_id']}")
    assert gone.value.code == "blob_not_found"

    monkeypatch.setattr(handler_module, "now_ms", lambda: real_now() + 31 * 86_400_000)
    assert await blobs.collect_garbage() == 1  # the sent one, after 30 days
    assert blob_files(server) == []
    with pytest.raises(AttachmentError, match="blob_not_found"):
        await bob.download_attachment(got.id, tmp_path / "late.bin")


async def test_blob_access_rules_and_bad_input(
    make_client: ClientFactory, server: RunningServer, tmp_path: Path
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    status = await alice.transport.request("POST", "/v1/blobs", {"size": 10})
    blob_id = status["blob_id"]
    assert len(blob_id) == 43 and status["received"] == 0
    alice_auth = {"Authorization": f"Bearer {await alice.transport.token()}"}
    bob_auth = {"Authorization": f"Bearer {await bob.transport.token()}"}

    async with httpx.AsyncClient(base_url=server.url) as http:

        async def put(headers: dict[str, str], query: str, body: bytes) -> httpx.Response:
            return await http.put(f"/v1/blobs/{blob_id}{query}", content=body, headers=headers)

        def code(resp: httpx.Response) -> str:
            return str(resp.json()["error"]["code"])

        # Only the device that started an upload may add to it.
        resp = await put(bob_auth, "?offset=0", b"x" * 10)
        assert (resp.status_code, code(resp)) == (403, "not_your_upload")
        assert code(await put({}, "?offset=0", b"x" * 10)) == "unauthorized"
        assert code(await put(alice_auth, "", b"x" * 10)) == "bad_request"
        assert code(await put(alice_auth, "?offset=-1", b"x" * 10)) == "bad_request"
        assert code(await put(alice_auth, "?offset=5", b"x" * 10)) == "offset_mismatch"
        assert code(await put(alice_auth, "?offset=0", b"x" * 9)) == "bad_request"
        # Not complete yet: nothing to download.
        resp = await http.get(f"/v1/blobs/{blob_id}/content", headers=bob_auth)
        assert code(resp) == "blob_incomplete"
        resp = await put(alice_auth, "?offset=0", b"y" * 10)
        assert resp.json()["complete"] is True
        assert code(await put(alice_auth, "?offset=10", b"")) == "offset_mismatch"

        # Anyone authenticated with the id may fetch the (opaque) bytes; nobody without.
        assert (await http.get(f"/v1/blobs/{blob_id}/content")).status_code == 401
        resp = await http.get(f"/v1/blobs/{blob_id}/content", headers=bob_auth)
        assert resp.content == b"y" * 10
        resp = await http.get(
            f"/v1/blobs/{blob_id}/content", headers={**bob_auth, "Range": "bytes=4-"}
        )
        assert (resp.status_code, resp.content) == (206, b"y" * 6)
        resp = await http.get(
            f"/v1/blobs/{blob_id}/content", headers={**bob_auth, "Range": "bytes=0-3"}
        )
        assert code(resp) == "bad_request"
        for bad in ("A" * 43, "short", "../../etc/passwd"):
            resp = await http.get(f"/v1/blobs/{bad}/content", headers=bob_auth)
            assert resp.status_code == 404
        # Only the uploading account may delete.
        resp = await http.delete(f"/v1/blobs/{blob_id}", headers=bob_auth)
        assert code(resp) == "blob_not_found"
        for body in ({"size": 0}, {"size": -5}, {"size": "10"}, {"size": 10, "x": 1}):
            resp = await http.post("/v1/blobs", json=body, headers=alice_auth)
            assert code(resp) == "bad_request", body
        resp = await http.delete(f"/v1/blobs/{blob_id}", headers=alice_auth)
        assert resp.json() == {"ok": True}
        resp = await http.get(f"/v1/blobs/{blob_id}/content", headers=bob_auth)
        assert code(resp) == "blob_not_found"


async def test_no_plaintext_name_or_key_reaches_the_server(
    make_client: ClientFactory, server: RunningServer, tmp_path: Path, database: str
) -> None:
    alice = await make_client("alice")
    bob = await make_client("bob")
    inbox = bob.subscribe()
    canary = b"CANARY-ATTACHMENT-" + os.urandom(8).hex().encode()
    name = "canary-secret-plans.txt"
    src = tmp_path / name
    src.write_bytes(canary * 20_000)
    await alice.send_file("bob", src, caption="canary caption")
    got = await received_attachment(inbox)
    await bob.download_attachment(got.id, tmp_path / "copy.txt")
    key_raw = base64.b64decode(got.attachment.key + "=")
    needles = [
        canary,
        name.encode(),
        b"canary caption",
        got.attachment.key.encode(),
        key_raw,
        got.attachment.digest.encode(),
    ]
    files = [p for p in server.config.data_dir.rglob("*") if p.is_file()]
    assert any(p.name == got.attachment.blob_id for p in files)
    if database != "sqlite":
        files = [p for p in files if "blobs" in p.parts]
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, (path.name, needle[:20])


# -- S3-compatible storage (moto in server mode, on loopback) -----------------------


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    moto_server = pytest.importorskip(
        "moto.server", reason="moto[server] is not installed (pip install -e '.[dev]')"
    )
    boto3 = pytest.importorskip("boto3", reason="boto3 is not installed")
    for var, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    port = free_port()
    s3_server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3_server.start()
    url = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket="bisik-test")
    try:
        yield url
    finally:
        s3_server.stop()


async def test_s3_backend_round_trip_resume_and_delete(
    server_factory: Callable[..., Awaitable[RunningServer]],
    moto_s3: str,
    tmp_path: Path,
) -> None:
    import boto3

    from bisik.client import KdfParams

    server = await server_factory(
        s3_bucket="bisik-test", s3_endpoint_url=moto_s3, s3_region="us-east-1"
    )
    kdf = KdfParams(time_cost=1, memory_cost_kib=8 * 1024, parallelism=1)
    # Alice's connections are cut once, 12 MiB into her upload.
    proxy = CuttingProxy(server.port, 12 * MiB)
    await proxy.start()
    alice = await Client.create_account(
        tmp_path / "alice", server_url=proxy.url, username="alice", password="pw", kdf=kdf
    )
    try:
        await alice.connect()
        await asyncio.wait_for(alice.synced.wait(), 10)
        src = tmp_path / "s3.bin"
        expected = write_random(src, 20 * MiB + 777)
        sent = await alice.send_file("alice", src)
        info = sent.attachment
        assert info is not None
        assert proxy.cuts == 1
        s3 = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1")
        head = s3.head_object(Bucket="bisik-test", Key=f"blobs/{info.blob_id}")
        assert head["ContentLength"] == info.size + 16 * -(-info.size // (64 * 1024))
        assert blob_files(server) == []  # nothing in the local directory

        out = await alice.download_attachment(sent.id, tmp_path / "back.bin")
        assert sha256_file(out) == expected
        await reconnected(alice)

        await alice.delete_attachment(sent.id)
        listed = s3.list_objects_v2(Bucket="bisik-test", Prefix="blobs/")
        assert listed.get("Contents", []) == []
    finally:
        await alice.close()
        await proxy.stop()
