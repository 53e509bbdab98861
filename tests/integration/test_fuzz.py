"""Property-based fuzzing (hypothesis) of every Socket.IO event and HTTP endpoint.

A real server runs in a thread of its own (uvicorn on a loopback port, SQLite);
hypothesis drives a hostile device, mallory, through synchronous clients:
wrong types, huge, empty and deeply nested values, lone surrogates (what JSON
has for invalid UTF-8), raw bytes that are not UTF-8 at all, unknown events,
replayed and reordered acks. For every example: an answer comes, it is a
well-formed success or refusal with a known code (never ``internal``, never an
HTTP 500), nothing reaches the server's ERROR log, and mallory's connection
still answers. After every test, two other clients still chat.

CI runs ``BISIK_FUZZ_EXAMPLES`` examples per test (default 60); ``fuzz/run.py``
runs many more.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import socketio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bisik.crypto import b64encode
from bisik.proto import ErrorCode
from bisik.server import EmbeddedServer, ServerConfig
from bisik.server.rest._routes import _API
from tests.conftest import close_socket_client
from tests.integration.test_bad_input import Dev, edited, token_request

EXAMPLES = int(os.environ.get("BISIK_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    # Shrinking a failure against a live server can take many minutes: report it raw.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
CODES = {str(c) for c in ErrorCode}

# The server's thread draws from the global ``random`` (engine.io, asyncio) while
# hypothesis generates data in this one, which hypothesis takes for a strategy
# using ``random``; the examples themselves do not depend on it.
# (And hypothesis warns when it prints a huge failing example: the failure matters more.)
pytestmark = [
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]


class ErrorLog(logging.Handler):
    """Every ERROR record from the server's loggers (a bug, by the server's own rule)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}")


class ThreadedServer:
    """An ``EmbeddedServer`` on an event loop of its own, for synchronous tests."""

    def __init__(self, config: ServerConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = EmbeddedServer(config)
        self.url = self.server.url
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        self.run(self.server.start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self.server.stop())
            self.run(self._cancel_the_rest())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    @staticmethod
    async def _cancel_the_rest() -> None:
        # Heartbeats of sockets the stopped server still held: end them cleanly.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def events(self) -> list[str]:
        return sorted(self.server.app.other_asgi_app.state.namespace._handlers)


class Sock:
    """A Socket.IO client authenticated as one hand-made device, driven synchronously
    (it runs on the server thread's event loop)."""

    def __init__(self, server: ThreadedServer, token: str) -> None:
        self.server = server
        self.token = token
        self.sio = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        self.connect()

    def connect(self) -> None:
        self.server.run(
            self.sio.connect(
                self.server.url,
                auth={"token": self.token},
                transports=["websocket"],
                wait_timeout=10,
            )
        )

    @property
    def connected(self) -> bool:
        return bool(self.sio.connected)

    def call(self, event: Any, data: Any) -> Any:
        if not self.connected:
            # Only a frame over the size limit ends a connection; the device comes back.
            self.server.run(close_socket_client(self.sio))
            self.connect()
        return self.server.run(self.sio.call(event, data, timeout=10))

    def send_raw(self, raw: str | bytes) -> None:
        self.server.run(self.sio.eio.send(raw))

    def close(self) -> None:
        self.server.run(close_socket_client(self.sio))


class World:
    def __init__(self, server: ThreadedServer, http: httpx.Client, errors: ErrorLog) -> None:
        self.server = server
        self.errors = errors
        self.http = http
        self.devs = {name: Dev.new(name) for name in ("alice", "bob", "mallory")}
        self.tokens = {}
        for name, dev in self.devs.items():
            resp = http.post("/v1/accounts", json=dev.register_body())
            assert resp.status_code == 200, resp.text
            self.tokens[name] = self.login(dev)
        self.socks = {name: Sock(server, token) for name, token in self.tokens.items()}

    def call(self, event: Any, payload: Any) -> Any:
        """mallory sends one event; the server must answer it and log no error."""
        case = f"{short(event)} {short(payload)}"
        try:
            ack = self.socks["mallory"].call(event, payload)
        except socketio.exceptions.TimeoutError:
            raise AssertionError(f"no answer to {case}") from None
        assert not self.errors.records, f"{case}: {self.errors.records[:3]}"
        check_ack(ack, case)
        return ack

    def login(self, dev: Dev) -> str:
        chal = self.http.post("/v1/auth/challenge", json=dev.ref()).json()["challenge"]
        resp = self.http.post("/v1/auth/token", json=token_request(dev, chal))
        assert resp.status_code == 200, resp.text
        return str(resp.json()["token"])

    def assert_others_chat(self) -> None:
        """alice -> bob still goes through: stored, pushed, synced, acked."""
        body = b64encode(os.urandom(24))
        alice, bob = self.socks["alice"], self.socks["bob"]
        sent = alice.call(
            "send",
            {
                "client_message_id": secrets.token_urlsafe(12),
                "envelopes": [self.devs["bob"].envelope(body)],
            },
        )
        assert sent["ok"] is True, sent
        pending = self.queue("bob")
        assert body in [e["body"] for e in pending], "bob's queue lost it"
        for start in range(0, len(pending), 1000):
            ids = [e["id"] for e in pending[start : start + 1000]]
            assert bob.call("ack", {"ids": ids})["ok"] is True

    def queue(self, name: str) -> list[dict[str, Any]]:
        """Everything waiting for a device, every page of it."""
        out: list[dict[str, Any]] = []
        while True:
            after = out[-1]["id"] if out else 0
            page = self.socks[name].call("sync", {"after": after, "limit": 500})
            out += page["envelopes"]
            if not page["more"]:
                return out


@pytest.fixture(scope="module")
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    loggers = [logging.getLogger(n) for n in ("bisik", "socketio", "engineio", "uvicorn")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, error_log: ErrorLog) -> Iterator[World]:
    data: Path = tmp_path_factory.mktemp("fuzz-server")
    with (
        ThreadedServer(ServerConfig(data_dir=data)) as server,
        httpx.Client(base_url=server.url, timeout=15) as http,
    ):
        world = World(server, http, error_log)
        try:
            yield world
        finally:
            for sock in world.socks.values():
                sock.close()


@pytest.fixture(autouse=True)
def _clean_and_working(world: World, error_log: ErrorLog) -> Iterator[None]:
    error_log.records.clear()
    yield
    assert not error_log.records, "\n".join(error_log.records[:20])
    world.assert_others_chat()


# -- strategies ---------------------------------------------------------------------

SURROGATES = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1)
STRINGS = st.one_of(
    st.text(max_size=40),
    SURROGATES,
    st.text(st.characters(max_codepoint=0x1F), max_size=10),  # NUL and controls
    # Big, yet under the 1 MiB frame limit (a bigger frame just ends the connection,
    # as test_bad_input shows) even when JSON escapes each emoji to 12 bytes.
    st.sampled_from(["", " ", "alice", "bob", "mallory", "x" * 200_000, "🙂" * 20_000]),
    st.from_regex(r"[A-Za-z0-9_-]{4,70}", fullmatch=True),
)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**63 - 1, 2**63, 2**64, 10**400]),
    st.floats(),
    st.booleans(),
)
SCALARS = st.one_of(st.none(), NUMBERS, STRINGS)
KEYS = st.one_of(st.text(max_size=12), SURROGATES, st.sampled_from(["username", "ids", "v"]))


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value] if depth % 2 else {"a": value}
    return value


VALUES = st.one_of(
    st.recursive(
        SCALARS,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(KEYS, inner, max_size=5),
        max_leaves=12,
    ),
    st.integers(min_value=1, max_value=400).map(nested),
    st.lists(st.integers(), min_size=1000, max_size=3000),
)


def templates(world: World) -> dict[str, Any]:
    """A valid payload per event (where the test knows one), to mutate a field of."""
    bob = world.devs["bob"]
    return {
        "send": {"client_message_id": "fuzz0000001", "envelopes": [bob.envelope()]},
        "send_many": {
            "messages": [{"client_message_id": "fuzz0000002", "envelopes": [bob.envelope()]}]
        },
        "sync": {"after": 0, "limit": 10},
        "ack": {"ids": [1, 2]},
        "keys_upload": {
            "one_time_keys": [world.devs["mallory"].signed_key()],
            "fallback_key": None,
        },
        "keys_claim": {"devices": [bob.ref()]},
        "devices": {"username": "bob"},
        "devices_watch": {"usernames": ["bob", "alice"]},
        "presence": {"username": "bob"},
        "settings": {"share_presence": True},
        "push_subscribe": {
            "endpoint": "https://push.example.com/x",
            "keys": {"p256dh": "B" * 87, "auth": "A" * 22},
        },
    }


def paths(value: Any, prefix: str = "") -> list[str]:
    """Every dotted path inside a template."""
    out = []
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, inner in items:
        path = f"{prefix}{key}"
        out.append(path)
        if isinstance(inner, dict | list) and inner:
            out += paths(inner, path + ".")
    return out


def mutated(template: Any) -> st.SearchStrategy[Any]:
    """The template with one field replaced by a hostile value (or removed)."""
    if not isinstance(template, dict) or not template:
        return VALUES
    return st.tuples(st.sampled_from(paths(template)), VALUES).map(
        lambda pv: edited(template, pv[0], pv[1])
    )


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 300 else f"{text[:150]}...({len(text)} chars)...{text[-100:]}"


def check_ack(ack: Any, case: str) -> None:
    assert isinstance(ack, dict), f"{case}: {ack!r}"[:500]
    if ack.get("ok") is True:
        return
    assert ack.get("ok") is False and set(ack) == {"ok", "error"}, f"{case}: {ack!r}"[:500]
    code = ack["error"]["code"]
    assert code in CODES and code != "internal", f"{case}: {ack!r}"[:500]
    assert isinstance(ack["error"]["message"], str) and ack["error"]["message"]


# -- socket events --------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_fuzz_every_socket_event(world: World, data: st.DataObject) -> None:
    known = templates(world)
    event = data.draw(st.sampled_from(world.server.events), label="event")
    payload = data.draw(
        st.one_of(mutated(known.get(event, {})), VALUES, st.binary(max_size=64)), label="payload"
    )
    world.call(event, payload)


@FUZZ
@given(
    event=st.one_of(
        STRINGS,
        st.sampled_from(["connect", "disconnect", "message", "envelope", "SEND", "send "]),
        st.integers(),
        st.none(),
        st.lists(st.text(max_size=5), max_size=2),
    ),
    payload=VALUES,
)
def test_fuzz_unknown_events_and_names(world: World, event: Any, payload: Any) -> None:
    if event in world.server.events:
        return
    assert world.call(event, payload)["ok"] is False


@FUZZ
@given(ids=st.lists(st.integers(min_value=-5, max_value=2**63 + 5), max_size=30))
def test_fuzz_replayed_and_reordered_acks(world: World, ids: list[int]) -> None:
    """Acks of ids in any order, repeated, unknown or another device's: never a crash,
    and bob's own queue is never touched by mallory."""
    bob = world.socks["bob"]
    body = b64encode(os.urandom(12))
    world.socks["alice"].call(
        "send",
        {
            "client_message_id": secrets.token_urlsafe(12),
            "envelopes": [world.devs["bob"].envelope(body)],
        },
    )
    mine = [e["id"] for e in world.queue("bob") if e["body"] == body]
    ack = world.call("ack", {"ids": ids + mine})
    # Refused (an id out of range), or bob's ids passed over (mallory's own go).
    assert ack["ok"] is False or set(ack) == {"ok", "deleted"}, ack
    assert [e["id"] for e in world.queue("bob") if e["body"] == body] == mine
    assert bob.call("ack", {"ids": mine})["ok"] is True


# -- raw Engine.IO packets --------------------------------------------------------------


@FUZZ
@given(
    raw=st.one_of(
        st.text(max_size=200).map(lambda t: "2" + t),
        st.text(max_size=200).map(lambda t: "42" + t),
        st.text(max_size=50),
        st.binary(max_size=200),
    )
)
def test_fuzz_raw_packets(world: World, raw: str | bytes) -> None:
    """Below the event layer: anything that is not a packet is dropped, the socket lives."""
    sock = world.socks["mallory"]
    if not sock.connected:
        sock.call("sync", {})
    sock.send_raw(raw)
    world.call("sync", {})


# -- HTTP -------------------------------------------------------------------------------

ROUTES = [(method, path, auth) for method, path, _fn, _req, _resp, auth in _API]
# Path parameters as they go on the wire: percent-encoded text (surrogates
# included), and some raw escapes of bytes that are not UTF-8.
PATH_VALUES = st.one_of(
    st.text(min_size=1, max_size=80).map(lambda t: quote(t, safe="", errors="surrogatepass")),
    st.sampled_from(["bob", "..", "%00", "%ff%fe", "a" * 5000, "%2e%2e%2f", "%ED%A0%80"]),
)
BODIES = st.one_of(
    VALUES.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),  # not JSON, not even UTF-8
    st.sampled_from([b"", b"\xff\xfe\xfd", b"[" * 50_000, b"1" * 5000, b"{" + b" " * 10]),
)


def fill(path: str, value: str) -> str:
    out = path
    while "{" in out:
        start, end = out.index("{"), out.index("}")
        out = out[:start] + value + out[end + 1 :]
    return out


@FUZZ
@given(
    route=st.sampled_from(ROUTES),
    param=PATH_VALUES,
    body=BODIES,
    auth=st.sampled_from(["mallory", "none", "garbage"]),
    content_type=st.sampled_from(["application/json", "text/plain", "", "application/x-www"]),
)
def test_fuzz_every_http_endpoint(
    world: World,
    route: tuple[str, str, bool],
    param: str,
    body: bytes,
    auth: str,
    content_type: str,
) -> None:
    method, path, _ = route
    headers: dict[str, str | bytes] = {"content-type": content_type} if content_type else {}
    if auth == "mallory":
        headers["authorization"] = f"Bearer {world.tokens['mallory']}"
    elif auth == "garbage":
        headers["authorization"] = b"Bearer \xff\xfe" + b"A" * 40 if len(body) % 2 else b"Basic x"
    url = fill(path, param)
    resp = world.http.request(method, url, content=body, headers=headers)
    case = f"{method} {path} -> {resp.status_code}"
    assert resp.status_code < 500, f"{case}: {resp.text[:300]}"
    if resp.status_code >= 400 and resp.headers.get("content-type", "").startswith(
        "application/json"
    ):
        error = resp.json()["error"]
        assert error["code"] in CODES, case


@FUZZ
@given(
    route=st.sampled_from([r for r in _API if r[3] is not None]),
    data=st.data(),
)
def test_fuzz_http_bodies_one_field_off(world: World, route: Any, data: st.DataObject) -> None:
    """Valid-looking bodies with one field broken, sent with mallory's token."""
    method, path, _fn, model, _resp, _auth = route
    example = {name: None for name in model.model_fields}
    body = data.draw(mutated(example), label="body")
    resp = world.http.request(
        method,
        fill(path, "bob"),
        content=json.dumps(body).encode(),
        headers={
            "content-type": "application/json",
            "authorization": f"Bearer {world.tokens['mallory']}",
        },
    )
    assert resp.status_code < 500, f"{method} {path}: {resp.text[:300]}"
