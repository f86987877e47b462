"""Test doubles for the core: a clock the test moves, and a :class:`Transport` that records.

:class:`FakeTransport` is the peer of a :class:`~sidecar.core.client.Client` (the thing under
test is the client or the hub, never this): it records every byte "written" in order, lets the
test choose what a non-blocking write does (:attr:`FakeTransport.outcome`) and can hold
blocking writes at a gate, so that a client's queue backs up exactly as far as the test wants.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any

from sidecar import frames
from sidecar.config import Config
from sidecar.core.client import Client
from sidecar.core.connection import Data, SendResult, iter_data
from sidecar.envelope import Event
from tests.conftest import wait_for

#: How long a test waits for what takes milliseconds when the code is right (5 s by default);
#: ``SIDECAR_TEST_PATIENCE`` shortens it where broken code is the point (mutation testing).
PATIENCE = float(os.environ.get("SIDECAR_TEST_PATIENCE", "5"))


def wait_until(predicate: Callable[[], Any]) -> Any:
    """:func:`tests.conftest.wait_for` with the unit tests' patience."""
    return wait_for(predicate, PATIENCE)


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move on by ``seconds``; the new time."""
        self.now += seconds
        return self.now


class FakeTransport:
    """A :class:`~sidecar.core.client.Transport` that records what the client does with it.

    ``outcome`` is what :meth:`try_send` reports (SENT and PARTIAL record the data as
    written); :meth:`send_all` waits while ``gate`` is clear, then records its buffers.
    """

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.outcome = SendResult.SENT
        self.gate = threading.Event()
        self.gate.set()
        self.written = bytearray()
        self.try_sends = 0
        self.closes: list[tuple[int, str, bool]] = []
        self.aborts: list[tuple[int, str]] = []
        self.shutdowns = 0
        self.in_send_all = threading.Event()
        self.last_received = clock() if clock else 0.0
        #: What :meth:`receive` hands out, in order: messages, or exceptions it raises.
        self.incoming: queue.Queue[str | bytes | BaseException] = queue.Queue()
        #: What :meth:`join_reader` reports, and the timeouts it was given.
        self.reader_done = True
        self.joins: list[float] = []
        #: The timeout of each :meth:`receive`.
        self.receives: list[float | None] = []
        self.lingered: list[float] = []
        self._cond = threading.Condition()

    # -- the Transport protocol ------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return not self.closes and not self.aborts

    def try_send(self, data: Data) -> SendResult:
        self.try_sends += 1
        if self.outcome in (SendResult.SENT, SendResult.PARTIAL):
            self._record(iter_data([data]))
        return self.outcome

    def send_all(self, buffers: Iterable[bytes]) -> None:
        self.in_send_all.set()
        if not self.gate.wait(2 * PATIENCE):
            raise TimeoutError("the test never opened the gate")
        if self.aborts or self.shutdowns:
            raise OSError("shut down")
        self._record(buffers)

    def close(self, code: int, reason: str = "", *, block: bool = True) -> bool:
        with self._cond:
            self.closes.append((code, reason, block))
            self._cond.notify_all()
        return True

    def abort(self, code: int, reason: str) -> None:
        with self._cond:
            self.aborts.append((code, reason))
            self._cond.notify_all()
        self.gate.set()  # like a real shutdown: a writer blocked in a write wakes (and fails)

    def shutdown(self) -> None:
        with self._cond:
            self.shutdowns += 1
            self._cond.notify_all()
        self.gate.set()

    def linger(self, timeout: float) -> None:
        self.lingered.append(timeout)

    def receive(self, timeout: float | None) -> bytes | str | None:
        self.receives.append(timeout)
        try:
            item = self.incoming.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return item or None  # "" stands for a poll that timed out

    def join_reader(self, timeout: float) -> bool:
        self.joins.append(timeout)
        return self.reader_done

    def ended_by(self) -> str:
        return "eof"

    # -- what the test reads ---------------------------------------------------------------
    def _record(self, buffers: Iterable[bytes]) -> None:
        with self._cond:
            for buffer in buffers:
                self.written += buffer
            self._cond.notify_all()

    def frames(self) -> list[frames.Frame]:
        """Every whole frame written so far, in order."""
        with self._cond:
            return frames.FrameParser().feed(bytes(self.written))

    def messages(self) -> list[dict[str, Any]]:
        """The JSON of every text frame written so far."""
        return [json.loads(f.payload) for f in self.frames() if f.opcode == frames.OP_TEXT]

    def wait_messages(self, count: int, timeout: float = PATIENCE) -> list[dict[str, Any]]:
        """Wait until ``count`` text frames were written; all of them."""
        return wait_for(lambda: len(m := self.messages()) >= count and m, timeout)

    def wait_closed(self, timeout: float = PATIENCE) -> None:
        """Wait until the client closed or aborted the transport."""
        with self._cond:
            assert self._cond.wait_for(lambda: not self.is_open, timeout), "never closed"


def seqs(messages: list[dict[str, Any]]) -> list[int]:
    """The ``seq`` of each broadcast among ``messages``."""
    return [m["seq"] for m in messages if "seq" in m]


def new_client(clock: FakeClock | None = None, **config: Any) -> tuple[Client, FakeTransport]:
    """A client over a fresh :class:`FakeTransport`, with ``Config`` overrides."""
    transport = FakeTransport(clock)
    return Client(transport, Config(**config), remote="test"), transport


#: One timestamp for every test event, so that equal payloads encode to equal lengths.
TIMESTAMP = "2026-01-01T00:00:00Z"


def tick(i: int, **extra: Any) -> Event:
    """An ``app:tick`` event numbered ``i`` (``extra`` keys join its payload)."""
    return Event("app:tick", {"i": i, **extra}, TIMESTAMP)
