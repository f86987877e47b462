"""A sidecar on a real redis-server whose keys others write to, and whose answers may be lost.

Issue 19, items 3-6, end to end: one sidecar in this process with ``--broker`` (its relay
thread, its hub, its HTTP API), WebSocket clients that check every frame, and a plain Redis
client that writes into the stream behind the sidecar's back (another deployment on the same
keys, a buggy publisher, an operator's ``XADD``) or freezes Redis (SIGSTOP).

What a user must see, whatever the stream holds: clients get only valid events, each once,
with contiguous seqs, or a 4001 close after which they resume; publishes get 202, or an
answer that tells the truth (503 not broadcast, 504 unknown); the relay never stops and never
spins (its thread's CPU time is measured); what was skipped is counted in ``/metrics`` and
``/api/v1/hub``. The relay fuzz writes random hostile entries while real events flow.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.broker.redis import RedisBroker
from sidecar.config import Config
from sidecar.core.hub import Hub
from sidecar.envelope import loads_strict
from sidecar.web.extension import create_app
from tests.conftest import TOKEN, RunningSidecar, wait_for
from tests.redis_server import RedisServer
from tests.stream_entries import META, STREAM, envelope, event_fields, position_key, revoke_fields

P1 = "project:p1"
WAIT = 15.0
FUZZ_EXAMPLES = int(os.environ.get("SIDECAR_RELAY_FUZZ_EXAMPLES", "25"))


def post(
    port: int, body: Any, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """``POST /api/v1/events`` on a new connection: status, headers and the JSON answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    all_headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    try:
        conn.request("POST", "/api/v1/events", json.dumps(body), {**all_headers, **(headers or {})})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        conn.close()


def get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        conn.close()


def tick(tag: str, channel: str = "") -> dict[str, Any]:
    return {
        "type": "test:tick",
        "payload": {"id": tag},
        **({"channel": channel} if channel else {}),
    }


def next_event(ws: websocket.WebSocket, timeout: float = WAIT) -> dict[str, Any] | int | None:
    """The next event (strict JSON, a text frame), or the close code (None: EOF)."""
    ws.settimeout(timeout)
    while True:
        try:
            frame = ws.recv_frame()
        except (websocket.WebSocketConnectionClosedException, ConnectionError):
            return None
        if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(frame.data[:2], "big") if len(frame.data) >= 2 else 1005
        if frame.opcode == websocket.ABNF.OPCODE_TEXT:
            event = loads_strict(frame.data)
            assert isinstance(event, dict), event
            return event


@pytest.fixture
def broker_sidecar(
    redis_server: RedisServer, sidecar_factory: Callable[..., RunningSidecar]
) -> RunningSidecar:
    return sidecar_factory(broker=redis_server.url, ping_interval=0, history_size=64)


def relay_counters(sidecar: RunningSidecar) -> dict[str, Any]:
    """The relay's part of ``GET /api/v1/hub``."""
    return dict(json.loads(get(sidecar.port, "/api/v1/hub"))["relay"])


def malformed_metric(sidecar: RunningSidecar) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = get(sidecar.port, "/metrics").decode()
    return {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "sidecar_broker_malformed_total"
    }


def relay_thread() -> threading.Thread:
    (thread,) = [t for t in threading.enumerate() if t.name == "sidecar-broker-relay"]
    return thread


def thread_cpu(thread: threading.Thread) -> float:
    """CPU seconds ``thread`` has used so far (its own clock, not the process's)."""
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


# -- items 3 and 4: one entry that is not a publish's --------------------------------------------


@pytest.mark.parametrize(
    ("entry_id", "kind"), [("*", "fields"), ("head-1", "id")], ids=["auto-id", "between-events"]
)
def test_an_entry_without_d_is_counted_and_events_keep_reaching_clients(
    broker_sidecar: RunningSidecar, redis_server: RedisServer, entry_id: str, kind: str
) -> None:
    sidecar = broker_sidecar
    ws, status = sidecar.connect_ready()
    redis = redis_server.client()
    head = status["payload"]["seq"]
    pos = int(redis.hget(META, "pos"))
    redis.xadd(STREAM, {"foo": "bar"}, id="*" if entry_id == "*" else f"{pos}-1")
    if entry_id == "*":  # (before the publish removes it: the relay reads it, and goes on)
        wait_for(lambda: relay_counters(sidecar).get("malformed"), WAIT)
    code, _headers, answer = post(sidecar.port, tick("after"))
    assert code == 202, answer
    got = next_event(ws)
    if entry_id == "*":
        # the foreign ID blocked "<pos>-0": the publish started a new epoch (one 4001)
        assert got == 4001
        ws, status = sidecar.connect_ready(f"?since={status['payload']['epoch']}:{head}")
        assert status["payload"]["recovered"] is False
        code, _headers, answer = post(sidecar.port, tick("after-2"))
        assert code == 202, answer
        got = next_event(ws)
    assert isinstance(got, dict) and got["seq"] == answer["seqs"][0], got
    counters = relay_counters(sidecar)
    assert counters["malformed"] == {kind: 1} and counters["running"] is True
    metric = malformed_metric(sidecar)
    assert metric[kind] == 1.0 and sum(metric.values()) == 1.0
    assert set(metric) == {"id", "fields", "too-large", "not-json", "not-envelope",
                           "reserved-type", "seq-mismatch", "channel-mismatch",
                           "ahead", "out-of-order"}  # fmt: skip


def test_a_foreign_auto_id_entry_is_no_reset_storm(
    broker_sidecar: RunningSidecar, redis_server: RedisServer
) -> None:
    sidecar = broker_sidecar
    redis = redis_server.client()
    forged = b'{"type":"app:forged","payload":{},"seq":1}'
    relay = relay_thread()
    cpu, started = thread_cpu(relay), time.monotonic()
    redis.xadd(STREAM, event_fields(forged, 1))  # XADD … * : an ID far above any position
    ws, status = sidecar.connect_ready()
    ws.settimeout(1.0)  # connected, and stays so: no 4001 as soon as it connects
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv_frame()
    counters = relay_counters(sidecar)
    assert counters["resets"] == 0 and counters["malformed"] == {"ahead": 1}
    assert thread_cpu(relay) - cpu < 0.5 * (time.monotonic() - started)  # it waited
    code, _headers, answer = post(sidecar.port, tick("x"))  # was 503, burning a seq
    assert code == 202, answer
    assert next_event(ws) == 4001  # once: the new epoch
    ws, status = sidecar.connect_ready(f"?since={status['payload']['epoch']}:0")
    code, _headers, answer = post(sidecar.port, tick("y"))
    got = next_event(ws)
    assert isinstance(got, dict) and got["payload"] == {"id": "y"}
    assert got["seq"] == answer["seqs"][0] == status["payload"]["seq"] + 1
    assert relay_counters(sidecar)["resets"] == 1


# -- item 5: garbage is never delivered -------------------------------------------------------


FORGED: list[tuple[bytes, str]] = [
    (b'{"type":"connection:status","payload":{"status":"connected","epoch":"x","seq":0,'
     b'"recovered":true},"seq":SEQ}', "reserved-type"),
    (b'{"type":"app:x","payload":{},"seq":99999}', "seq-mismatch"),
    (b"not json SEQ", "not-json"),
    (b'{"type":"app:x","payload":{},"seq":SEQ,"channel":"project:p1"}', "channel-mismatch"),
]  # fmt: skip


@pytest.mark.parametrize("takes_seq", [False, True], ids=["position", "position-and-seq"])
@pytest.mark.parametrize(("data", "kind"), FORGED, ids=[k for _d, k in FORGED])
def test_a_forged_entry_in_the_next_positions_place_reaches_no_client(
    broker_sidecar: RunningSidecar,
    redis_server: RedisServer,
    data: bytes,
    kind: str,
    takes_seq: bool,
) -> None:
    sidecar = broker_sidecar
    ws, status = sidecar.connect_ready()
    head = status["payload"]["seq"]
    redis = redis_server.client()
    pos = int(redis.hget(META, "pos"))
    pipe = redis.pipeline(transaction=True)  # a forger that takes the next position too
    fields = event_fields(data.replace(b"SEQ", b"%d" % (head + 1)), head + 1)
    pipe.xadd(STREAM, fields, id=f"{pos + 1}-0")
    pipe.hincrby(META, "pos", 1)
    if takes_seq:  # and the default channel's next seq
        pipe.hincrby(META, "seq", 1)
    pipe.execute()
    assert next_event(ws) == 4001  # position pos+1 is lost to everyone: resume
    ws, status = sidecar.connect_ready(f"?since={status['payload']['epoch']}:{head}")
    # no event of the default channel was lost unless the forger took a seq of it too
    assert status["payload"]["recovered"] is not takes_seq
    code, _headers, answer = post(sidecar.port, tick("real"))
    real = head + 1 + takes_seq
    assert code == 202 and answer["seqs"] == [real], answer
    got = next_event(ws)
    assert isinstance(got, dict) and got["type"] == "test:tick" and got["seq"] == real
    assert relay_counters(sidecar)["malformed"] == {kind: 1}


@pytest.mark.parametrize(
    "forge",
    [
        # well formed, s and d agreeing, the channel's real epoch: a seq far ahead (a hub would
        # then drop p1's real events 2..1000 as duplicates), the next seq (which no publish
        # gave: the real seq 2 would be dropped), the last seq again
        lambda epoch, seq: event_fields(envelope(1000, P1), 1000, P1, epoch),
        lambda epoch, seq: event_fields(envelope(seq, P1), seq, P1, epoch),
        lambda epoch, seq: event_fields(envelope(seq - 1, P1), seq - 1, P1, epoch),
        lambda epoch, seq: event_fields(envelope(seq + 1, P1), seq + 1, P1, "another-epoch"),
        lambda epoch, seq: event_fields(envelope(seq + 1, P1), seq + 1, "chat:c9", epoch),
        lambda epoch, seq: event_fields(envelope(seq + 1), seq + 1, P1, epoch),
        lambda epoch, seq: event_fields(envelope(seq + 1, P1), seq + 1, P1, "bad epoch"),
        lambda epoch, seq: event_fields(envelope(seq + 1, P1), seq + 1, "Bad", epoch),
        lambda epoch, seq: {**event_fields(envelope(seq + 1, P1), seq + 1, P1, epoch), "s": "x"},
        lambda epoch, seq: revoke_fields("al ice", P1),
        lambda epoch, seq: revoke_fields("alice", "Bad"),
    ],
    ids=["far-ahead", "next-seq", "last-again", "other-epoch", "other-channel", "no-channel-in-d",
         "bad-epoch", "bad-channel", "bad-seq", "revoke-bad-user", "revoke-bad-channel"],
)  # fmt: skip
def test_a_forged_entry_of_a_named_channel_never_wedges_it(
    broker_sidecar: RunningSidecar, redis_server: RedisServer, forge: Callable[..., Any]
) -> None:
    sidecar = broker_sidecar
    ws, status = sidecar.connect_ready(f"?channels={P1}")
    code, _headers, answer = post(sidecar.port, tick("one", P1))
    assert code == 202 and answer["seqs"] == [1]
    got = next_event(ws)
    assert isinstance(got, dict) and (got["channel"], got["seq"]) == (P1, 1)
    redis = redis_server.client()
    epoch = redis.hget(position_key(P1), "epoch").decode()
    pos = int(redis.hget(META, "pos"))
    pipe = redis.pipeline(transaction=True)  # a forger that takes the next position
    pipe.xadd(STREAM, forge(epoch, 2), id=f"{pos + 1}-0")
    pipe.hincrby(META, "pos", 1)
    pipe.execute()
    assert next_event(ws) == 4001  # the position is lost to everyone: resume, nothing else
    since = f"{P1}@{epoch}:1"
    ws, status = sidecar.connect_ready(f"?channels={P1}&since={since}")
    assert status["payload"]["channels"][P1] == {"epoch": epoch, "seq": 1, "recovered": True}
    for n in (2, 3):  # the channel's real events keep arriving, once each
        code, _headers, answer = post(sidecar.port, tick(f"real-{n}", P1))
        assert code == 202 and answer["seqs"] == [n], answer
        got = next_event(ws)
        assert isinstance(got, dict) and got["payload"] == {"id": f"real-{n}"}, got
        assert (got["channel"], got["seq"]) == (P1, n)
    assert sum(relay_counters(sidecar)["malformed"].values()) == 1


# -- item 6: an answer that was lost, and idempotency keys -------------------------------------


@contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """Redis stopped with SIGSTOP: connections are accepted, nothing is answered."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def test_a_publish_redis_never_answered_is_504_unknown_and_a_retry_with_the_key_is_once(
    redis_server: RedisServer, sidecar_factory: Callable[..., RunningSidecar]
) -> None:
    config = Config(broker=redis_server.url, ping_interval=0, token=TOKEN)
    sequencer = RedisBroker(redis_server.url, timeout=0.5)  # the publishes' answer deadline
    hub = Hub(config, autostart=True, sequencer=sequencer)
    sidecar = sidecar_factory(create_app(config, hub=hub))
    try:
        ws, status = sidecar.connect_ready()
        assert post(sidecar.port, tick("warm"))[0] == 202  # a pooled connection to Redis
        assert isinstance(next_event(ws), dict)
        key = {"Idempotency-Key": "8e03978e-40d5-43e8-bc93-6894a57f9324"}
        with frozen(redis_server):  # (a new connection would fail before sending: a 503)
            code, headers, answer = post(sidecar.port, [tick("a"), tick("b")], key)
        assert (code, headers["Retry-After"], answer.get("outcome")) == (504, "1", "unknown")
        assert answer["error"].startswith("outcome unknown: ")
        assert answer["error"].endswith("; retry with the same Idempotency-Key")
        first = next_event(ws)  # it was published after all
        assert isinstance(first, dict) and first["payload"] == {"id": "a"}
        seqs = [first["seq"], first["seq"] + 1]
        code, _headers, answer = post(sidecar.port, [tick("a"), tick("b")], key)  # the retry
        assert code == 202 and answer == {"accepted": 2, "seqs": seqs, "duplicate": True}
        code, _headers, answer = post(sidecar.port, tick("c"))
        assert code == 202 and answer["seqs"] == [seqs[1] + 1]
        got = [next_event(ws), next_event(ws)]
        assert [(e["seq"], e["payload"]["id"]) for e in got if isinstance(e, dict)] == [
            (seqs[1], "b"),
            (seqs[1] + 1, "c"),
        ]  # "a" and "b" once each
        assert status["payload"]["seq"] + 2 == seqs[0]
    finally:
        sequencer.close()


def test_a_retry_with_the_key_whose_channels_differ_gets_the_first_answer_not_a_500(
    broker_sidecar: RunningSidecar,
) -> None:
    key = {"Idempotency-Key": "order-9"}
    first = [tick("a", P1), tick("b", P1)]
    code, _headers, answer = post(broker_sidecar.port, first, key)
    assert code == 202 and answer["seqs"] == [1, 2], answer
    for other in ([tick("a", P1), tick("b", "chat:c9")], [tick("a"), tick("b")]):
        code, _headers, again = post(broker_sidecar.port, other, key)  # was: a 500, a 413
        assert code == 202 and again == {"accepted": 2, "seqs": [1, 2], "duplicate": True}
    code, _headers, again = post(broker_sidecar.port, [tick("a", P1)], key)
    assert code == 422 and again["error"].startswith("Idempotency-Key: "), again


def test_without_a_broker_the_key_is_honoured_too_and_bad_keys_are_refused(
    sidecar: RunningSidecar,
) -> None:
    ws, _status = sidecar.connect_ready()
    key = {"Idempotency-Key": '"order-7"'}  # the IETF draft's quoted form: the same key
    code, _headers, first = post(sidecar.port, [tick("a")], key)
    assert code == 202 and first["seqs"] == [1] and "duplicate" not in first
    code, _headers, again = post(sidecar.port, [tick("a")], {"Idempotency-Key": "order-7"})
    assert code == 202 and again == {"accepted": 1, "seqs": [1], "duplicate": True}
    code, _headers, answer = post(sidecar.port, [tick("a"), tick("b")], key)
    assert code == 422 and answer["error"].startswith("Idempotency-Key: ")
    for bad in ("", "has space", "x" * 129, "clé", "a;b"):
        code, _headers, answer = post(sidecar.port, tick("bad"), {"Idempotency-Key": bad})
        assert code == 400 and answer["error"].startswith("Idempotency-Key: "), (bad, answer)
    raw = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=10)
    raw.putrequest("POST", "/api/v1/events")
    for name, value in [("Authorization", f"Bearer {TOKEN}"), ("Idempotency-Key", "a"),
                        ("Idempotency-Key", "b"), ("Content-Length", "2")]:  # fmt: skip
        raw.putheader(name, value)
    raw.endheaders(b"{}")
    assert raw.getresponse().status == 400
    raw.close()
    code, _headers, answer = post(sidecar.port, tick("c"))
    assert code == 202 and answer["seqs"] == [2]
    got = next_event(ws)
    assert isinstance(got, dict) and (got["seq"], got["payload"]["id"]) == (1, "a")
    got = next_event(ws)
    assert isinstance(got, dict) and (got["seq"], got["payload"]["id"]) == (2, "c")


# -- the relay fuzz: hostile entries while real events flow ---------------------------------

_JUNK_IDS = ["auto", "sub", "next", "far", "huge"]

#: Junk as a function of (seq it pretends to have, the named channel's real epoch).
JunkFields = Callable[[int, str], dict[str, Any]]


def _d(template: bytes, seq_offset: int = 0) -> JunkFields:
    def fields(seq: int, _epoch: str) -> dict[str, Any]:
        return {"d": template.replace(b"SEQ", b"%d" % (seq + seq_offset)), "s": seq}

    return fields


def _p1(template: bytes, s_offset: int = 0, **changes: Any) -> JunkFields:
    """Junk on project:p1 (the fuzzed client's named channel)."""

    def fields(seq: int, epoch: str) -> dict[str, Any]:
        data = template.replace(b"SEQ", b"%d" % seq)
        return {"d": data, "s": seq + s_offset, "c": P1, "e": epoch, **changes}

    return fields


_P1_TEMPLATE = b'{"type":"app:x","payload":{},"seq":SEQ,"channel":"project:p1"}'
_JUNK_DATA: dict[str, JunkFields] = {
    "no-d": lambda seq, epoch: {"x": b"y"},
    "no-s": lambda seq, epoch: {"d": b'{"type":"app:x","seq":%d}' % seq},
    "extra-field": lambda seq, epoch: {"d": b'{"type":"app:x","seq":%d}' % seq, "s": seq, "x": b""},
    "not-json": _d(b"\xff\xfe not json"),
    "nan": _d(b'{"type":"app:x","payload":{"n":NaN},"seq":SEQ}'),
    "repeated-key": _d(b'{"type":"connection:status","type":"app:x","seq":SEQ}'),
    "huge": _d(b'{"type":"app:x","payload":"' + b"x" * (1 << 20) + b'","seq":SEQ}'),
    "status": _d(b'{"type":"connection:status","payload":{},"seq":SEQ}'),
    "client-type": _d(b'{"type":"chat:send","payload":{},"seq":SEQ}'),
    "seq-mismatch": _d(b'{"type":"app:x","payload":{},"seq":SEQ}', 7),
    "seq-not-last": _d(b'{"seq":SEQ,"type":"app:x"}'),
    "channel": _d(b'{"type":"app:x","payload":{},"channel":"chat:c1","seq":SEQ}'),
    "well-formed": _d(b'{"type":"app:forged","payload":{},"seq":SEQ}'),
    "p1-no-channel": _p1(b'{"type":"app:x","payload":{},"seq":SEQ}'),
    "p1-other-channel": _p1(_P1_TEMPLATE, c="chat:c9"),
    "p1-bad-name": _p1(_P1_TEMPLATE, c="Not A Channel"),
    "p1-bad-epoch": _p1(_P1_TEMPLATE, e="not an epoch!"),
    "p1-s-mismatch": _p1(_P1_TEMPLATE, 3),
    "p1-reserved": _p1(
        b'{"type":"channel:subscribed","payload":{},"seq":SEQ,"channel":"project:p1"}'
    ),
    "p1-ahead": lambda seq, epoch: event_fields(envelope(9999, P1), 9999, P1, epoch),
    "p1-again": lambda seq, epoch: event_fields(envelope(seq - 1, P1), seq - 1, P1, epoch),
    "p1-new-epoch": lambda seq, epoch: event_fields(envelope(seq, P1), seq, P1, "forged-epoch"),
    "revoke-bad-user": lambda seq, epoch: revoke_fields("no one", P1),
    "revoke-bad-channel": lambda seq, epoch: revoke_fields("alice", "project:p1,chat:c9"),
}


@dataclass
class Junk:
    where: str
    data: str
    bump: bool  # also raise the meta's position (a forger that takes the position it writes)


@dataclass
class Flow:
    """The fuzzed sidecar, a checking client on the default channel and project:p1, and
    what was published on each."""

    sidecar: RunningSidecar
    redis: Any
    published: dict[tuple[str, str], int] = field(default_factory=dict)  # (channel, id) -> seq
    count: int = 0
    ws: Any = None
    positions: dict[str, tuple[str, int]] = field(default_factory=dict)  # channel -> (epoch, seq)

    def connect(self, resume: bool = False) -> None:
        query = f"?channels={P1}"
        if resume:
            (epoch, seq), (p1_epoch, p1_seq) = self.positions[""], self.positions[P1]
            query += f"&since={epoch}:{seq},{P1}@{p1_epoch}:{p1_seq}"
        self.ws, status = self.sidecar.connect_ready(query)
        payload = status["payload"]
        if not (resume and payload["recovered"]):
            self.positions[""] = (payload["epoch"], payload["seq"])
        state = payload["channels"][P1]
        if not (resume and state["recovered"]):
            self.positions[P1] = (state["epoch"], state["seq"])

    def publish(self, n: int) -> None:
        tags = [f"e{self.count + i}" for i in range(n)]
        channels = [P1 if (self.count + i) % 3 == 1 else "" for i in range(n)]
        self.count += n
        body = [tick(t, c) for t, c in zip(tags, channels, strict=True)]
        code, _headers, answer = post(self.sidecar.port, body)
        assert code == 202, answer  # never 503 for what is in the stream
        self.published.update(zip(zip(channels, tags, strict=True), answer["seqs"], strict=True))

    def write(self, junk: Junk) -> None:
        head = int(self.redis.hget(META, "pos") or 0)
        pos = {"auto": head + 1, "sub": head, "next": head + 1, "far": head + 1000,
               "huge": 2**60}[junk.where]  # fmt: skip
        entry_id = {"auto": "*", "sub": f"{head}-{1 + self.count}"}.get(junk.where, f"{pos}-0")
        # the seq it pretends to have: its channel's next one
        channel = P1 if junk.data.startswith("p1-") else ""
        _epoch, seq = self.positions[channel]
        real_epoch = (self.redis.hget(position_key(P1), "epoch") or b"E").decode()
        fields = _JUNK_DATA[junk.data](seq + 1, real_epoch)
        try:
            self.redis.xadd(STREAM, fields, id=entry_id)
        except Exception:  # an ID not above the stream's top: Redis refuses it, as it should
            return
        # a forger that also takes the position it wrote (one that writes a well-formed event
        # and takes its position and its channel's seq is a publisher: nothing tells it apart)
        if junk.bump and junk.where == "next" and junk.data != "well-formed":
            self.redis.hincrby(META, "pos", 1)

    def check(self, event: dict[str, Any]) -> None:
        """One event as the client got it: only what was published, once, in order."""
        assert event["type"] == "test:tick", event  # nothing forged, nothing reserved
        channel = event.get("channel", "")
        epoch, last = self.positions[channel]
        assert event["seq"] == last + 1, (event, last)
        assert self.published.get((channel, event["payload"]["id"])) == event["seq"], event
        self.positions[channel] = (epoch, event["seq"])

    def drain(self) -> None:
        """Publish a marker and read until it arrives, resuming after each 4001."""
        for _attempt in range(4):
            self.publish(1)
            marker = f"e{self.count - 1}"
            while True:
                got = next_event(self.ws)
                if isinstance(got, dict):
                    self.check(got)
                    if got["payload"]["id"] == marker:
                        return
                    continue
                assert got == 4001, got  # the only close a client may get here
                self.connect(resume=True)
                break
        raise AssertionError("the marker never arrived")


_junk = st.builds(Junk, st.sampled_from(_JUNK_IDS), st.sampled_from(sorted(_JUNK_DATA)),
                  st.booleans())  # fmt: skip
_ops = st.lists(st.one_of(st.integers(1, 3), _junk), min_size=1, max_size=12)


@pytest.fixture
def flow(broker_sidecar: RunningSidecar, redis_server: RedisServer) -> Flow:
    flow = Flow(broker_sidecar, redis_server.client())
    flow.connect()
    return flow


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=_ops)
def test_relay_fuzz_hostile_entries_while_events_flow(flow: Flow, ops: list[Any]) -> None:
    relay = relay_thread()
    cpu, started = thread_cpu(relay), time.monotonic()
    for op in ops:
        if isinstance(op, int):
            flow.publish(op)
        else:
            flow.write(op)
    flow.drain()
    assert relay.is_alive() and relay_counters(flow.sidecar)["running"] is True
    # (a relay that spins keeps a core busy; one that works waits in XREAD most of the time)
    assert thread_cpu(relay) - cpu < 0.5 * (time.monotonic() - started) + 0.05
