"""One WebSocket connection of a subscriber, on websocket-client (the ``client`` extra).

websocket-client is imported here only, when a subscriber first connects. It does the
handshake (TLS, proxies, the ``Sec-WebSocket-Accept`` check), framing, masking, fragments,
UTF-8 validation and the close handshake; this module adds what a long-lived subscriber needs
around it: a connection that can wait for "readable *or* woken" (a selector over the socket
and a :class:`Waker`), frames read as they become readable, and errors sorted into a few
meanings (refused with an HTTP status, unreachable, closed with a code, lost).

Threads: a :class:`Connection` belongs to the subscriber's I/O thread, which does every read
and every write on it. Other threads only :meth:`Waker.wake` it.
"""

from __future__ import annotations

import selectors
import socket
import ssl
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..protocol import CloseCode

if TYPE_CHECKING:
    import websocket

__all__ = ["Closed", "Connection", "Ended", "Lost", "Refused", "Unreachable", "Waker", "connect"]

#: The longest piece of a refusal's body kept in the error (the hub's are one line).
_BODY_LIMIT = 300


class Refused(Exception):
    """The hub answered the handshake with an HTTP status instead of 101."""

    def __init__(self, status: int, body: str, retry_after: str | None) -> None:
        super().__init__(f"HTTP {status}: {body}" if body else f"HTTP {status}")
        self.status = status
        self.body = body
        self.retry_after = retry_after


class Unreachable(Exception):
    """No connection: refused, reset, timed out, a name that does not resolve, a TLS failure.

    ``retry`` is ``False`` when trying again cannot help (a certificate that does not verify).
    """

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class Ended(Exception):
    """The connection ended with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}".strip())
        self.code = code
        self.reason = reason


class Closed(Ended):
    """The hub closed the connection with ``code`` (1005: no code) and ``reason``."""


class Lost(Ended):
    """The connection ended without a close frame (1006), or on a protocol error (1002,
    1007: what the hub sent was not valid WebSocket or UTF-8)."""


class Waker:
    """Wakes the I/O thread from its wait: a socket pair (selectable on every OS)."""

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)

    def fileno(self) -> int:
        return self._read.fileno()

    def wake(self) -> None:
        """Make the next (or the current) wait return; never blocks."""
        try:
            self._write.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # full (a wake-up is pending anyway) or closed

    def drain(self) -> None:
        try:
            while self._read.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def wait(self, timeout: float | None) -> None:
        """Wait until woken or ``timeout`` seconds have passed (no connection)."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._read, selectors.EVENT_READ)
            selector.select(timeout)
        self.drain()

    def close(self) -> None:
        self._read.close()
        self._write.close()


def connect(
    url: str,
    *,
    headers: Sequence[str],
    subprotocols: Sequence[str],
    timeout: float,
    origin: str | None,
    sslopt: Mapping[str, Any] | None,
    waker: Waker,
) -> Connection:
    """Open a WebSocket to ``url`` within ``timeout`` seconds (TCP, TLS and the handshake).

    Raises :class:`Refused` (an HTTP answer) or :class:`Unreachable`.
    """
    import websocket

    try:
        ws = websocket.create_connection(
            url,
            timeout=timeout,
            header=list(headers),
            subprotocols=list(subprotocols),
            origin=origin,
            suppress_origin=origin is None,
            sslopt=dict(sslopt or {}),
            enable_multithread=True,
        )
    except websocket.WebSocketBadStatusException as exc:
        headers_in = exc.resp_headers or {}
        body = (exc.resp_body or b"").decode("utf-8", "replace").strip()[:_BODY_LIMIT]
        raise Refused(exc.status_code, body, headers_in.get("retry-after")) from None
    except ssl.SSLCertVerificationError as exc:
        raise Unreachable(f"TLS: {exc.verify_message or exc}", retry=False) from None
    except (OSError, websocket.WebSocketException) as exc:
        raise Unreachable(_describe(exc)) from None
    return Connection(ws, waker, timeout)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text)


class Connection:
    """An open WebSocket (see the module docstring). ``io_timeout`` bounds every blocking
    read or write once data has started to flow (a frame that stops halfway, a send the hub
    does not read)."""

    def __init__(self, ws: websocket.WebSocket, waker: Waker, io_timeout: float) -> None:
        self.ws = ws
        assert ws.sock is not None  # connected
        self.sock: socket.socket = ws.sock
        self.waker = waker
        self.sock.settimeout(io_timeout)
        self.subprotocol: str | None = ws.getsubprotocol()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.sock, selectors.EVENT_READ)
        self._selector.register(waker, selectors.EVENT_READ)

    def wait(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds for data or a wake-up; whether data is readable."""
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        ready = self._selector.select(timeout)
        readable = False
        for key, _ in ready:
            if key.fileobj is self.waker:
                self.waker.drain()
            else:
                readable = True
        return readable

    def recv(self) -> str | None:
        """Read the frame that is arriving: its text for a text message, ``None`` for
        anything else (a control frame, a message still incomplete, a binary message).

        Raises :class:`Closed` or :class:`Lost` when the connection ends.
        """
        import websocket
        from websocket import ABNF

        try:
            opcode, frame = self.ws.recv_data_frame(control_frame=True)
        except websocket.WebSocketTimeoutException:
            return None  # the rest of the frame comes later; websocket-client keeps the part
        except websocket.WebSocketPayloadException as exc:
            raise Lost(CloseCode.INVALID_DATA, str(exc)) from None
        except websocket.WebSocketProtocolException as exc:
            raise Lost(CloseCode.PROTOCOL_ERROR, str(exc)) from None
        except (websocket.WebSocketException, OSError) as exc:
            raise Lost(CloseCode.ABNORMAL, _describe(exc) or "connection lost") from None
        if opcode == ABNF.OPCODE_TEXT:
            data = frame.data
            return data.decode("utf-8") if isinstance(data, bytes) else str(data)
        if opcode == ABNF.OPCODE_CLOSE:
            raise _closed(bytes(frame.data))
        return None

    def send_text(self, text: str) -> None:
        """Send one text message; raises :class:`Lost` if the connection is gone."""
        self._write(lambda: self.ws.send(text))

    def ping(self) -> None:
        self._write(lambda: self.ws.ping())

    def _write(self, action: Any) -> None:
        import websocket

        try:
            action()
        except (websocket.WebSocketException, OSError) as exc:
            raise Lost(CloseCode.ABNORMAL, _describe(exc) or "send failed") from None

    def close(self, code: int = CloseCode.NORMAL, reason: str = "", timeout: float = 1.0) -> None:
        """Close cleanly: our close frame, the hub's answer (``timeout`` at most), the socket."""
        try:
            self.ws.close(status=code, reason=reason.encode()[:123], timeout=timeout)
        except Exception:
            self.ws.abort()
        self.abort()

    def abort(self) -> None:
        """Drop the connection at once, without a close frame (idempotent)."""
        try:
            self.ws.abort()
        finally:
            self.ws.shutdown()
            if self._selector.get_map() is not None:
                self._selector.close()


def _closed(data: bytes) -> Closed:
    if len(data) < 2:
        return Closed(CloseCode.NO_STATUS, "")
    return Closed(int.from_bytes(data[:2], "big"), data[2:].decode("utf-8", "replace"))
