"""Full garbage collections kept off the fan-out path: what is long-lived is frozen.

With a thread per connection, each connection keeps ~175 objects the cyclic garbage collector
tracks (threads, locks, the request's objects, the library's parser). With 1,000 connections
a full collection walks ~200,000 objects: 50 to 90 ms with every other thread stopped, wherever
it lands (the fan-out of an event included). Objects that live as long as the process or a
connection need no walking: :func:`gc.freeze` moves every tracked object to a generation that
collections skip (they are still freed by reference counting when nothing refers to them).

:class:`GcPolicy` decides when, from the hub thread's own events:

* **at start** (:meth:`GcPolicy.start`): freeze what start-up made (modules, the app);
* **after a burst of connections**: once :data:`BURST` clients (and a quarter of those
  frozen before) have registered since the last freeze, the next time the hub is idle
  (nothing in its inbox) it collects the young generations (what finished requests left) and
  freezes again: a short walk of young objects, then one pointer swap;
* **after churn**: a connection frozen and then gone may leave reference cycles in the frozen
  generation, which nothing collects. Once as many clients have left as are connected (at
  least :data:`CHURN`), the next idle moment unfreezes, collects everything once and freezes
  again: cycles of departed connections cost memory for a bounded while, and the one full
  walk happens when no event is waiting.

After each freeze a collection of what is left (nearly nothing) resets the collector's
count of long-lived objects, so that later full collections stay as small as the objects made
since. The thresholds stay the interpreter's (measured in docs/performance.md).

It acts only where the sidecar owns the process (the CLI, a gunicorn worker: see
``Hub.manage_gc``); a library embedding the hub elsewhere opts in the same way.

Threads: the hub thread only (every method); the ``gc`` module it calls is process-wide.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Protocol

log = logging.getLogger("sidecar.hub")

#: Registrations since the last freeze that make a burst worth freezing (at least).
BURST = 64
#: Departures since the last full collection that make one worth its walk (at least).
CHURN = 256


class Collector(Protocol):
    """The part of :mod:`gc` the policy uses (a fake in the unit tests)."""

    def freeze(self) -> None: ...

    def unfreeze(self) -> None: ...

    def collect(self, generation: int = 2) -> int: ...

    def get_freeze_count(self) -> int: ...


class GcPolicy:
    """When to freeze, and when to collect everything once (see the module docstring)."""

    def __init__(self, collector: Collector | None = None) -> None:
        self._gc: Collector = gc if collector is None else collector
        #: Clients registered since the last freeze.
        self.joined = 0
        #: Clients that left since the last full collection.
        self.left = 0
        #: Clients connected at the last freeze.
        self.frozen_clients = 0
        self.freezes = 0
        self.full_collections = 0
        #: Milliseconds the last full collection took (0 before the first).
        self.last_full_ms = 0.0

    def start(self) -> None:
        """Freeze what start-up made (as it is: start-up makes little garbage, and a walk of
        everything would cost start-up time)."""
        self._freeze(0, young_first=False)

    def joined_one(self) -> None:
        """A client registered."""
        self.joined += 1

    def left_one(self) -> None:
        """A client left."""
        self.left += 1

    def idle(self, clients: int) -> None:
        """The hub has nothing to do (``clients`` connected): freeze or collect if due."""
        if self.left >= max(CHURN, clients):
            self._full(clients)
        elif self.joined >= max(BURST, self.frozen_clients // 4):
            self._freeze(clients)

    def _freeze(self, clients: int, *, young_first: bool = True) -> None:
        if young_first:
            self._gc.collect(1)  # garbage still young (finished requests) is not kept
        self._gc.freeze()
        self._gc.collect()  # what was not frozen: next to nothing; resets the long-lived count
        self.joined = 0
        self.frozen_clients = clients
        self.freezes += 1

    def _full(self, clients: int) -> None:
        started = time.perf_counter()
        self._gc.unfreeze()
        found = self._gc.collect()
        self.last_full_ms = (time.perf_counter() - started) * 1000
        self.full_collections += 1
        self.left = 0
        self._freeze(clients, young_first=False)
        log.debug(
            "full collection after churn: %d objects freed in %.1f ms; %d frozen",
            found,
            self.last_full_ms,
            self._gc.get_freeze_count(),
        )
