"""Crypto costs on this machine: Argon2id unlock, and Olm through Bisik's wrappers.

Run: ``.venv/bin/python bench/bench_crypto.py [--unlock-runs N] [--budget SECONDS]``

(a) ``KeyFile.unlock`` with the default ``KdfParams`` (t=3, m=64 MiB, p=4).
(b) Olm encrypt+decrypt, one message = one encrypt by the sender plus one decrypt
    by the receiver, in three tiers:

    raw       vodozemac.Session.encrypt / decrypt, no pickling, no store
    dict      ``OlmMachine`` with an in-memory dict ``SessionStore``: adds the
              per-operation session pickle (encrypted with the pickle key),
              base64 and ``AnyOlmMessage.from_parts``
    sqlcipher ``OlmMachine`` on a real ``LocalStore`` (SQLCipher, WAL,
              synchronous=FULL) in a temp dir, each operation inside its own
              ``store.transaction()`` as the client does: adds the UPSERT and
              a durable COMMIT per encrypt and per decrypt

    and two traffic patterns:

    ping-pong a sends, b decrypts and replies, a decrypts (direction changes
              every message, so every message starts a new DH ratchet step)
    burst     a sends to b only (symmetric chain ratchet only)

(c) Megolm (groups) encrypt+decrypt, one sender and one receiver, same three tiers:

    raw       vodozemac.GroupSession.encrypt / InboundGroupSession.decrypt
    dict      ``MegolmOutbound.encrypt`` + pickling the outbound session after each
              (as the client persists it), and on receipt what the client does:
              ``parse_megolm``, ``MegolmInbound.from_pickle``, ``decrypt``, and a
              replay check on ``(session_id, message_index)`` (a Python set)
    sqlcipher the same through the client's ``GroupStore`` on a real ``LocalStore``:
              ``save_outbound`` in one transaction per encrypt; ``inbound`` lookup,
              then ``mark_seen`` in one transaction per decrypt

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import vodozemac

from _common import banner, median, percentile, summary_line
from bisik.client._group_store import GroupStore, Inbound, Outbound
from bisik.client._store import LocalStore
from bisik.crypto import (
    KdfParams,
    MegolmInbound,
    MegolmOutbound,
    OlmMachine,
    create_master_key,
    parse_megolm,
)

PASSWORD = "correct horse battery staple"

# About the size of a real Plaintext JSON (sender/recipient stamps, ids, a short text).
PAYLOAD = json.dumps(
    {
        "v": 1,
        "type": "text",
        "id": "Xq3d0cM1f4pQyUe8yq3S9A",
        "sender": {"username": "alice", "device_id": "ABCDEFGHJK", "ed25519": "A" * 43},
        "recipient": {"username": "bob", "device_id": "KJHGFEDCBA", "ed25519": "B" * 43},
        "to": "bob",
        "sent_at": 1_700_000_000_000,
        "body": "see you at the station at eight, bring the tickets please",
    }
).encode()


# -- (a) Argon2id ------------------------------------------------------------------


def bench_unlock(runs: int) -> dict[str, float]:
    params = KdfParams()
    t0 = time.perf_counter()
    keyfile, _ = create_master_key(PASSWORD, params)
    wrap_s = time.perf_counter() - t0
    keyfile.unlock(PASSWORD)  # warm-up: first touch of the 64 MiB arena
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        keyfile.unlock(PASSWORD)
        samples.append(time.perf_counter() - t0)
    ms = [s * 1000 for s in samples]
    print(
        f"(a) Argon2id KeyFile.unlock, default KdfParams "
        f"(t={params.time_cost}, m={params.memory_cost_kib // 1024} MiB, p={params.parallelism})"
    )
    print(f"    create_master_key (wrap, one call): {wrap_s * 1000:7.1f} ms")
    print(
        f"    unlock over {runs} calls (after 1 warm-up): "
        f"median {median(ms):.1f} ms  p95 {percentile(ms, 95):.1f} ms  "
        f"min {min(ms):.1f} ms  max {max(ms):.1f} ms"
    )
    print("    (p95 is linearly interpolated; with ~10 samples it is close to the max)")
    print()
    return {"median_ms": median(ms), "p95_ms": percentile(ms, 95)}


# -- (b) Olm -----------------------------------------------------------------------


class DictStore:
    """An in-memory ``SessionStore``: same interface as ``LocalStore``, no I/O."""

    def __init__(self) -> None:
        self.account: str | None = None
        self.sessions: dict[str, dict[str, str]] = {}
        self._used: dict[tuple[str, str], int] = {}
        self._clock = 0

    def save_account(self, pickle: str) -> None:
        self.account = pickle

    def load_sessions(self, their_key: str) -> list[str]:
        by_id = self.sessions.get(their_key, {})
        order = sorted(by_id, key=lambda sid: self._used[(their_key, sid)], reverse=True)
        return [by_id[sid] for sid in order]

    def save_session(self, their_key: str, session_id: str, pickle: str) -> None:
        self._clock += 1
        self.sessions.setdefault(their_key, {})[session_id] = pickle
        self._used[(their_key, session_id)] = self._clock

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        yield


Step = Callable[[], None]


def _run_for(step: Step, budget_s: float, batch: int) -> tuple[int, float]:
    """Call ``step`` in batches until ``budget_s`` has passed; (messages, seconds)."""
    done = 0
    t0 = time.perf_counter()
    while True:
        for _ in range(batch):
            step()
        done += batch
        elapsed = time.perf_counter() - t0
        if elapsed >= budget_s:
            return done, elapsed


class RawPair:
    """Two vodozemac sessions talking directly (no pickles, no store)."""

    def __init__(self) -> None:
        a, b = vodozemac.Account(), vodozemac.Account()
        b.generate_one_time_keys(1)
        otk = next(iter(b.one_time_keys.values()))
        b.mark_keys_as_published()
        self.a = a.create_outbound_session(b.curve25519_key, otk)
        first = self.a.encrypt(PAYLOAD)
        pre_key = first.to_pre_key()
        assert pre_key is not None
        self.b, _ = b.create_inbound_session(a.curve25519_key, pre_key)
        # b's reply makes a stop sending pre-key messages, as in WrappedPair.
        self.b_to_a()

    def a_to_b(self) -> None:
        self.b.decrypt(self.a.encrypt(PAYLOAD))

    def b_to_a(self) -> None:
        self.a.decrypt(self.b.encrypt(PAYLOAD))


class WrappedPair:
    """Two ``OlmMachine``s, each on its own store, every operation in a transaction."""

    def __init__(self, store_a: LocalStore | DictStore, store_b: LocalStore | DictStore) -> None:
        self.store_a, self.store_b = store_a, store_b
        _, master_a = create_master_key(PASSWORD, KdfParams(1, 8 * 1024, 1))
        _, master_b = create_master_key(PASSWORD, KdfParams(1, 8 * 1024, 1))
        with store_a.transaction():
            self.a = OlmMachine.create(master_a.derive("pickle"), store_a)
        with store_b.transaction():
            self.b = OlmMachine.create(master_b.derive("pickle"), store_b)
            otk = self.b.generate_one_time_keys(1)[0]["key"]
            self.b.mark_keys_as_published()
        self.ka, self.kb = self.a.curve25519, self.b.curve25519
        with store_a.transaction():
            self.a.create_outbound_session(self.kb, otk)
        # Establish: a's pre-key message, then b's reply, so both sides use normal messages.
        self.a_to_b()
        self.b_to_a()

    def a_to_b(self) -> None:
        with self.store_a.transaction():
            msg_type, body = self.a.encrypt(self.kb, PAYLOAD)
        with self.store_b.transaction():
            self.b.decrypt(self.ka, msg_type, body)

    def b_to_a(self) -> None:
        with self.store_b.transaction():
            msg_type, body = self.b.encrypt(self.ka, PAYLOAD)
        with self.store_a.transaction():
            self.a.decrypt(self.kb, msg_type, body)


def _ping_pong(pair: RawPair | WrappedPair) -> Step:
    def step() -> None:
        pair.a_to_b()
        pair.b_to_a()

    return step


def _pickle_cost(pair: RawPair | WrappedPair) -> float:
    assert isinstance(pair, RawPair)
    key = bytes(32)
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        pair.b.pickle(key)
    return (time.perf_counter() - t0) / n * 1e6


def bench_olm(budget_s: float, rounds: int) -> dict[str, float]:
    """Each cell runs ``rounds`` slices of ``budget_s / rounds``, cells interleaved per
    round so that drift on a shared VM hits every cell alike; the median slice counts."""
    samples: dict[tuple[str, str], list[float]] = {}
    slice_s = budget_s / rounds
    with tempfile.TemporaryDirectory(prefix="bisik-bench-") as tmp:
        store_a = LocalStore.open(Path(tmp) / "a.db", create_master_key(PASSWORD)[1].derive("db"))
        store_b = LocalStore.open(Path(tmp) / "b.db", create_master_key(PASSWORD)[1].derive("db"))
        try:
            tiers: list[tuple[str, RawPair | WrappedPair, int]] = [
                ("raw vodozemac", RawPair(), 100),
                ("wrapper + dict store", WrappedPair(DictStore(), DictStore()), 50),
                ("wrapper + SQLCipher", WrappedPair(store_a, store_b), 5),
            ]
            cells: list[tuple[str, str, Step, int, int]] = []
            for tier, pair, batch in tiers:
                cells.append((tier, "ping-pong", _ping_pong(pair), 2, batch))
                cells.append((tier, "burst a->b", pair.a_to_b, 1, batch))
            for _, _, step, _, batch in cells:
                _run_for(step, 0.1, batch)  # warm-up
            for _ in range(rounds):
                for tier, pattern, step, per_step, batch in cells:
                    steps, elapsed = _run_for(step, slice_s, batch)
                    samples.setdefault((tier, pattern), []).append(steps * per_step / elapsed)
            pickle_us = _pickle_cost(tiers[0][1])
        finally:
            store_a.close()
            store_b.close()

    results = {cell: median(rates) for cell, rates in samples.items()}
    print(
        f"(b) Olm encrypt+decrypt of a {len(PAYLOAD)}-byte payload "
        f"(1 msg = 1 encrypt + 1 decrypt); {rounds} interleaved slices of "
        f"{slice_s:.2f} s per cell, median slice shown"
    )
    print(
        "    SQLCipher: LocalStore (WAL, synchronous=FULL), one store.transaction() "
        "per encrypt and per decrypt"
    )
    header = (
        f"    {'tier':<22} {'pattern':<11} {'msgs/s':>8} {'us/msg':>8} "
        f"{'x raw':>6}   {'slices min..max msgs/s':>22}"
    )
    print(header)
    print("    " + "-" * (len(header) - 4))
    for (tier, pattern), rate in results.items():
        raw = results[("raw vodozemac", pattern)]
        lo, hi = min(samples[(tier, pattern)]), max(samples[(tier, pattern)])
        spread = f"{lo:.0f}..{hi:.0f}"
        print(
            f"    {tier:<22} {pattern:<11} {rate:8.0f} {1e6 / rate:8.1f} "
            f"{raw / rate:5.1f}x   {spread:>22}"
        )
    print()
    print("    cost breakdown per message (from the medians):")
    for pattern in ("ping-pong", "burst a->b"):
        raw = 1e6 / results[("raw vodozemac", pattern)]
        mem = 1e6 / results[("wrapper + dict store", pattern)]
        sql = 1e6 / results[("wrapper + SQLCipher", pattern)]
        print(
            f"    {pattern:<11} vodozemac {raw:7.1f} us | wrapper+pickling {mem - raw:+7.1f} us"
            f" | SQLCipher+COMMIT {sql - mem:+8.1f} us ({(sql - mem) / 2:.0f} us per transaction)"
        )
    mem_pp = results[("wrapper + dict store", "ping-pong")]
    mem_burst = results[("wrapper + dict store", "burst a->b")]
    sql_pp = results[("wrapper + SQLCipher", "ping-pong")]
    sql_burst = results[("wrapper + SQLCipher", "burst a->b")]
    print(
        f"    SQLCipher wrapper vs in-memory wrapper: {mem_pp / sql_pp:.1f}x slower ping-pong, "
        f"{mem_burst / sql_burst:.1f}x slower burst"
    )
    print(
        f"    for scale: one Session.pickle of a live session = {pickle_us:.1f} us "
        f"(the wrapper pickles once per encrypt and once per decrypt)"
    )
    print()
    return {f"{tier} {pattern}": rate for (tier, pattern), rate in results.items()}


# -- (c) Megolm ----------------------------------------------------------------------


class RawGroup:
    """A vodozemac outbound session and its inbound copy, no pickles, no store."""

    def __init__(self) -> None:
        self.out = vodozemac.GroupSession()
        self.inb = vodozemac.InboundGroupSession(self.out.session_key)

    def a_to_b(self) -> None:
        self.inb.decrypt(self.out.encrypt(PAYLOAD))


class WrappedGroup:
    """Bisik's Megolm wrappers, persisting as the client does, in a dict or a GroupStore."""

    GROUP = "g" * 22

    def __init__(self, store: LocalStore | None) -> None:
        self.pickle_key = bytes(32)
        self.store = store
        self.gdb = GroupStore(store) if store is not None else None
        self.out = MegolmOutbound.create()
        inbound = MegolmInbound.from_session_key(self.out.session_key())
        self.saved = {
            "out": self.out.pickle(self.pickle_key),
            "in": inbound.pickle(self.pickle_key),
        }
        self.seen: set[tuple[str, int]] = set()
        if self.gdb is not None and store is not None:
            with store.transaction():
                self.gdb.save_inbound(
                    Inbound(self.out.session_id, self.GROUP, "a", "DEV", "k", self.saved["in"], 0),
                    0,
                )

    def _persist_out(self) -> None:
        pickle = self.out.pickle(self.pickle_key)
        if self.gdb is None:
            self.saved["out"] = pickle
        else:
            outbound = Outbound(self.out.session_id, pickle, 0, set())
            self.gdb.save_outbound(self.GROUP, outbound)

    def a_to_b(self) -> None:
        if self.store is None:
            body = self.out.encrypt(PAYLOAD)
            self._persist_out()
            header = parse_megolm(body)
            MegolmInbound.from_pickle(self.saved["in"], self.pickle_key).decrypt(header)
            key = (header.session_id, header.message_index)
            if key in self.seen:
                raise AssertionError("replay")
            self.seen.add(key)
            return
        assert self.gdb is not None
        with self.store.transaction():
            body = self.out.encrypt(PAYLOAD)
            self._persist_out()
        header = parse_megolm(body)
        stored = self.gdb.inbound(header.session_id)
        assert stored is not None
        MegolmInbound.from_pickle(stored.pickle, self.pickle_key).decrypt(header)
        with self.store.transaction():
            if not self.gdb.mark_seen(header.session_id, header.message_index):
                raise AssertionError("replay")


def bench_megolm(budget_s: float, rounds: int) -> dict[str, float]:
    """Same interleaved slices as ``bench_olm``; burst pattern only (Megolm is one-way)."""
    samples: dict[str, list[float]] = {}
    slice_s = budget_s / rounds
    with tempfile.TemporaryDirectory(prefix="bisik-bench-") as tmp:
        store = LocalStore.open(Path(tmp) / "g.db", create_master_key(PASSWORD)[1].derive("db"))
        try:
            tiers: list[tuple[str, RawGroup | WrappedGroup, int]] = [
                ("raw vodozemac", RawGroup(), 100),
                ("wrapper + dict store", WrappedGroup(None), 50),
                ("wrapper + SQLCipher", WrappedGroup(store), 5),
            ]
            for _, group, batch in tiers:
                _run_for(group.a_to_b, 0.1, batch)  # warm-up
            for _ in range(rounds):
                for tier, group, batch in tiers:
                    steps, elapsed = _run_for(group.a_to_b, slice_s, batch)
                    samples.setdefault(tier, []).append(steps / elapsed)
        finally:
            store.close()
    results = {tier: median(rates) for tier, rates in samples.items()}
    raw = results["raw vodozemac"]
    print(
        f"(c) Megolm encrypt+decrypt of a {len(PAYLOAD)}-byte payload, one sender -> one "
        f"receiver; {rounds} interleaved slices of {slice_s:.2f} s per tier, median shown"
    )
    print(f"    {'tier':<22} {'msgs/s':>8} {'us/msg':>8} {'x raw':>6}")
    for tier, rate in results.items():
        print(f"    {tier:<22} {rate:8.0f} {1e6 / rate:8.1f} {raw / rate:5.1f}x")
    print()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unlock-runs", type=int, default=10)
    parser.add_argument("--budget", type=float, default=1.5, help="seconds per Olm cell")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved slices per cell")
    args = parser.parse_args()

    banner("bench_crypto: Argon2id unlock, Olm and Megolm through the wrappers")
    unlock = bench_unlock(args.unlock_runs)
    olm = bench_olm(args.budget, args.rounds)
    megolm = bench_megolm(args.budget, args.rounds)

    summary_line("argon2id unlock median (default params)", f"{unlock['median_ms']:.1f} ms")
    summary_line("argon2id unlock p95 (default params)", f"{unlock['p95_ms']:.1f} ms")
    for name, rate in olm.items():
        summary_line(f"olm {name}", f"{rate:.0f} msgs/s")
    for name, rate in megolm.items():
        summary_line(f"megolm {name}", f"{rate:.0f} msgs/s")
    raw = olm["raw vodozemac burst a->b"]
    for tier in ("wrapper + dict store", "wrapper + SQLCipher"):
        summary_line(
            f"olm wrapper overhead ({tier}, burst)", f"{raw / olm[f'{tier} burst a->b']:.1f}x raw"
        )
        summary_line(
            f"megolm wrapper overhead ({tier})",
            f"{megolm['raw vodozemac'] / megolm[tier]:.1f}x raw",
        )


if __name__ == "__main__":
    main()
