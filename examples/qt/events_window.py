"""A PySide6 window that lists the sidecar's events, the Qt recipe of ``docs/clients.md``.

The subscriber calls its handlers on one thread of its own (``sidecar-subscriber-callbacks``).
Widgets may only be touched on the GUI thread, so the handlers only emit Qt signals of a
``QObject`` that lives on the GUI thread: Qt queues a signal emitted from another thread and
runs the connected slots on the receiver's thread (an automatic connection).

    QT_QPA_PLATFORM=offscreen python events_window.py ws://127.0.0.1:PORT/ws  # SIDECAR_TOKEN set
"""

from __future__ import annotations

import os
import sys

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtWidgets import QApplication, QLabel, QListWidget, QVBoxLayout, QWidget

from sidecar.client import Event, Resync, Subscriber


class SidecarSignals(QObject):
    """The subscriber's items as Qt signals. Create it on the GUI thread, before ``start()``."""

    event = Signal(object)  # a sidecar.client.Event
    resync = Signal(object)  # a sidecar.client.Resync: reload that channel's state
    state = Signal(str)  # connecting | open | reconnecting | closed

    def __init__(self, subscriber: Subscriber) -> None:
        super().__init__()
        subscriber.on("*", self.event.emit)  # runs on the callback thread: emit, nothing else
        subscriber.on("resync", self.resync.emit)
        subscriber.on("state", lambda change: self.state.emit(change.state))


class EventsWindow(QWidget):
    """The connection state and the last events, newest first."""

    def __init__(self, signals: SidecarSignals) -> None:
        super().__init__()
        self.setWindowTitle("sidecar events")
        self.state = QLabel("connecting")
        self.events = QListWidget()
        layout = QVBoxLayout(self)
        layout.addWidget(self.state)
        layout.addWidget(self.events)
        signals.event.connect(self.add_event)  # slots run on the GUI thread
        signals.resync.connect(self.reload)
        signals.state.connect(self.state.setText)

    @Slot(object)
    def add_event(self, event: Event) -> None:
        channel = event.channel or "-"
        self.events.insertItem(0, f"{channel} #{event.seq} {event.type} {event.payload}")
        while self.events.count() > 200:
            self.events.takeItem(self.events.count() - 1)

    @Slot(object)
    def reload(self, resync: Resync) -> None:
        # an app reloads the channel's state here (its own API); this one just says so
        where = resync.channel or "the default channel"
        self.events.insertItem(0, f"(resync: {resync.reason} on {where})")


def main(url: str, channels: list[str]) -> int:
    app = QApplication(sys.argv)
    subscriber = Subscriber(
        url,
        token=os.environ.get("SIDECAR_TOKEN"),
        channels=channels,
        resync_on_first_connect=True,
        start=False,  # connect once the handlers are in place
    )
    window = EventsWindow(SidecarSignals(subscriber))
    window.show()
    subscriber.start()
    app.aboutToQuit.connect(subscriber.close)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
