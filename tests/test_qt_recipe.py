"""The Qt recipe (``examples/qt/events_window.py``, quoted in ``docs/clients.md``) with PySide6,
offscreen (``QT_QPA_PLATFORM=offscreen``): the subscriber's handlers run on its callback thread,
the window's slots on the GUI thread, and the window shows the events in order."""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sidecar.client import Subscriber
from sidecar.envelope import new_event
from tests.conftest import TOKEN, RunningSidecar
from tests.needs import needs_module

needs_module("PySide6", "pip install 'PySide6-Essentials>=6.5,<7' (the test extra has it)")
needs_module("websocket", "pip install 'sidecar-hub[client]'")

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "qt" / "events_window.py"
DOCS = ROOT / "docs" / "clients.md"


@pytest.fixture(scope="module")
def qt() -> Iterator[Any]:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    yield app


def _recipe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("events_window", RECIPE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _process_until(app: Any, predicate: Any, timeout: float = 10.0) -> None:
    """Run the Qt event loop until ``predicate()`` (the GUI thread's deliveries happen here)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not within the deadline"
        app.processEvents()
        threading.Event().wait(0.005)  # the GUI thread idles between rounds, as app.exec() would


def test_the_recipe_delivers_to_the_gui_thread(qt: Any, sidecar: RunningSidecar) -> None:
    recipe = _recipe()
    sub = Subscriber(
        sidecar.ws_url,
        token=TOKEN,
        channels=["project:p1"],
        resync_on_first_connect=True,
        start=False,
    )
    signals = recipe.SidecarSignals(sub)
    window = recipe.EventsWindow(signals)
    threads: dict[str, set[str]] = {"handler": set(), "slot": set()}
    sub.on("*", lambda _event: threads["handler"].add(threading.current_thread().name))
    signals.event.connect(lambda _event: threads["slot"].add(threading.current_thread().name))
    window.show()
    sub.start()
    try:
        _process_until(qt, lambda: window.state.text() == "open")
        sidecar.hub.publish([new_event("app:tick", {"i": 1})], "project:p1")
        sidecar.hub.publish([new_event("app:tick", {"i": 2})])
        _process_until(qt, lambda: window.events.count() >= 5)
    finally:
        sub.close()
        window.close()
    rows = [window.events.item(i).text() for i in range(window.events.count())]
    assert rows[:2] == ["- #1 app:tick {'i': 2}", "project:p1 #1 app:tick {'i': 1}"]
    assert (
        "(resync: initial on project:p1)" in rows
        and "(resync: initial on the default channel)" in rows
    )
    assert threads == {"handler": {"sidecar-subscriber-callbacks"}, "slot": {"MainThread"}}


def test_the_docs_quote_the_recipe_as_it_is() -> None:
    text = DOCS.read_text(encoding="utf-8")
    block = text.split("<!-- qt-recipe: begin -->", 1)[1].split("<!-- qt-recipe: end -->", 1)[0]
    code = block.split("```python\n", 1)[1].rsplit("```", 1)[0]
    assert code == RECIPE.read_text(encoding="utf-8")
