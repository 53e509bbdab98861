"""Property-based fuzzing (hypothesis) of the client's receive path, through a
real server: a modified client, mallory, encrypts arbitrary content (every
field of the plaintext models, with values of every type and size) for alice's
device and sends it; after each example, an ordinary message from mallory must
still reach alice, and nothing she stored may break reading her history.

CI runs ``BISIK_FUZZ_EXAMPLES`` examples (default 60); ``fuzz/run.py`` runs more.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from bisik.client import Client, MessageReceived
from bisik.server import EmbeddedServer, ServerConfig
from tests.conftest import FAST_KDF, PASSWORD
from tests.integration.test_fuzz import EXAMPLES
from tests.integration.test_poison import send_raw

T = TypeVar("T")

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

# Values of every JSON type, including the extremes that broke a client once.
ints = st.one_of(
    st.integers(),
    st.sampled_from([0, -1, 2**31, 2**53, 2**63, 2**64, 2**70, 10**17, -(2**63)]),
)
texts = st.text(max_size=40)
# Only the body is ever large (under and over its limit): a frame stays under
# the server's 1 MiB, which a sender over it would meet first.
bodies = st.one_of(texts, st.integers(60_000, 70_000).map(lambda n: "é" * n))
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(allow_nan=False), texts)
anything = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


def field(*likely: Any) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(likely), anything) if likely else anything


ACTION = st.fixed_dictionaries(
    {"kind": field("react", "edit", "delete", "timer", "forget", "opened")},
    optional={
        "target": field(),
        "target_sender": field("mallory", "alice"),
        "emoji": field("👍", ""),
        "body": field("edited"),
        "expires_in": ints,
    },
)
ATTACHMENT = st.fixed_dictionaries(
    {
        "blob_id": field("A" * 43),
        "key": field("B" * 43),
        "digest": field("C" * 43),
        "size": ints,
        "name": field("cat.jpg", "\x1b]0;pwned\x07.txt", "../../etc/passwd"),
        "mime": field("image/jpeg"),
    },
    optional={"width": ints, "height": ints, "duration_ms": ints, "waveform": field()},
)
CONTENT = st.fixed_dictionaries(
    {
        "type": field("text", "receipt", "typing", "action", "room_key", "key_request"),
        "sent_at": ints,
    },
    optional={
        "id": field("m" * 10, "x" * 64),
        "body": bodies,
        "receipt": st.fixed_dictionaries(
            {"kind": field("delivered", "read"), "ids": field(), "conversation": field()}
        ),
        "typing": field(True),
        "attachment": st.one_of(ATTACHMENT, anything),
        "reply_to": field(),
        "expires_in": ints,
        "view_once": field(True),
        "action": st.one_of(ACTION, anything),
        "room_key": anything,
        "key_request": anything,
        "v": field(1, 2),
    },
)


class Peers:
    """A server, alice and mallory on an event loop of their own thread, so that
    hypothesis's synchronous examples can drive them."""

    def __init__(self, home: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = EmbeddedServer(ServerConfig(data_dir=home / "server"))
        self.run(self.server.start())
        self.alice = self.run(self._client(home, "alice"))
        self.mallory = self.run(self._client(home, "mallory"))
        self.inbox: asyncio.Queue[Any] = self.alice.subscribe()
        self.pings = 0

    async def _client(self, home: Path, name: str) -> Client:
        client = await Client.create_account(
            home / name, server_url=self.server.url, username=name, password=PASSWORD, kdf=FAST_KDF
        )
        await client.connect()
        await asyncio.wait_for(client.synced.wait(), 10)
        return client

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def ping(self) -> None:
        """An ordinary message after the example must arrive."""
        self.pings += 1
        body = f"ping {self.pings}"
        await self.mallory.send_text("alice", body)
        async with asyncio.timeout(10):
            while True:
                event = await self.inbox.get()
                if isinstance(event, MessageReceived) and event.message.body == body:
                    return

    def close(self) -> None:
        for client in (self.alice, self.mallory):
            self.run(client.close())
        self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    running = Peers(tmp_path_factory.mktemp("receive-fuzz"))
    yield running
    running.close()


@FUZZ
@given(content=CONTENT)
@example(content={"type": "text", "id": "m" * 10, "sent_at": 2**70, "body": "poison"})
@example(content={"type": "text", "id": "m" * 11, "sent_at": 10**17, "body": "poison"})
def test_no_content_stops_the_receive_path(peers: Peers, content: dict[str, Any]) -> None:
    peers.run(send_raw(peers.mallory, "alice", content))
    peers.run(peers.ping())
    peers.run(read_back(peers.alice))


async def read_back(client: Client) -> None:
    """What was stored can be read back and shown (on the client's own loop: a
    client is not shared between threads)."""
    for message in client.history("mallory", limit=5):
        assert isinstance(message.to_json(), dict)
    client.unread()
    client.conversations()
