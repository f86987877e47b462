"""Strict HTTP/1.1 request heads for the sidecar's server: what is refused, and why (pure).

Python's ``http.server`` (under Werkzeug's development server) is lenient: it takes a bare LF
as a line end, folds ``obs-fold`` lines into the previous value, ends the header block at the
first line that is not a header (a space in a name: the rest of the head is silently
dropped), serves a two-word request line as HTTP/0.9 and a head cut off by EOF as if it were
complete. The checks here refuse each of those with a
:class:`~sidecar.web.guards.Rejection`: a status, a message for the client and a reason tag
(for the ``rejectedHandshakes``/``rejectedRequests`` counters). They follow RFC 9112 (which
obsoletes RFC 7230's message syntax):

* request line: ``method SP request-target SP HTTP/1.0|1.1 CRLF``, printable ASCII target;
* header lines: ``token ":" OWS value OWS CRLF``; no whitespace before the colon, no line that
  starts with whitespace (obs-fold), no control character but HTAB in a value;
* the head as a whole: at most :data:`MAX_HEAD_BYTES`, ended by an empty line;
* body framing: ``Transfer-Encoding`` is ``chunked`` alone, never with ``Content-Length``;
  ``Content-Length`` is one decimal number (repeats must agree); chunk sizes are 1-16 hex
  digits and at most the server's body limit.

No state and no threads: :class:`HeadReader` and :class:`DechunkedBody` belong to the request
thread that reads the request.
"""

from __future__ import annotations

import re
from email.message import Message
from typing import Any

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.serving import DechunkedInput

from .web.guards import Rejection

#: Longest request head (request line and header lines) taken, in bytes.
MAX_HEAD_BYTES = 64 << 10
#: Longest chunk-size line read.
MAX_CHUNK_LINE = 1024

_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_REQUEST_LINE = re.compile(_TCHAR + rb"+ [\x21-\x7e]+ HTTP/1\.[01]\r\n")
_ANY_VERSION = re.compile(rb"\S+ \S+ HTTP/[0-9]+(\.[0-9]+)?\r?\n")
_FIELD_LINE = re.compile(_TCHAR + rb"+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n")
_FIELD_NAME = re.compile(_TCHAR + rb"+")
_VALUE_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(;[^\x00-\x08\x0a-\x1f\x7f]*)?\r\n")
_DECIMAL = re.compile(r"[0-9]{1,18}")


def _bad(reason: str, message: str, status: int = 400) -> Rejection:
    """A refusal of a head (400 unless told)."""
    return Rejection(status, message, reason)


def _shown(data: bytes, limit: int = 40) -> str:
    """``data`` quoted for a message: escaped, at most ``limit`` bytes."""
    text = repr(data[:limit])[1:]
    return text if len(data) <= limit else text[:-1] + "…'"


def request_line_problem(line: bytes) -> Rejection | None:
    """What is wrong with a request line (with its line end), or ``None``."""
    if _REQUEST_LINE.fullmatch(line):
        return None
    if not line.endswith(b"\n"):
        return _bad("request-line", "incomplete request line")
    if not line.endswith(b"\r\n"):
        return _bad("request-line", "request line ends with a bare LF (send CRLF)")
    if _ANY_VERSION.fullmatch(line) and line.count(b" ") == 2:
        version = line.rsplit(b" ", 1)[1].strip()
        return _bad("version", f"unsupported version {_shown(version)} (HTTP/1.1)")
    if line.count(b" ") == 1:
        return _bad("request-line", "HTTP/0.9 requests are not served")
    return _bad("request-line", "malformed request line (method SP target SP HTTP/1.1 CRLF)")


def field_line_problem(line: bytes) -> Rejection | None:
    """What is wrong with one header line (with its line end), or ``None``.

    The empty line that ends the head is fine; an EOF (``b""``) is an incomplete head. The
    message names the header, never its value (which may hold a secret).
    """
    if line == b"\r\n" or _FIELD_LINE.fullmatch(line):
        return None
    if not line.endswith(b"\n"):
        return _bad("header", "incomplete request head")
    if line[:1] in (b" ", b"\t"):
        return _bad("header", "obs-fold (a header line starting with whitespace)")
    if not line.endswith(b"\r\n") or b"\n" in line[:-2]:
        return _bad("header", "header line ends with a bare LF (send CRLF)")
    if b"\r" in line[:-2]:
        return _bad("header", "bare CR in a header line")
    name, colon, value = line[:-2].partition(b":")
    if not colon:
        return _bad("header", f"header line without a colon: {_shown(name)}")
    if not name:
        return _bad("header", "empty header name")
    if name.rstrip(b" \t") != name:
        return _bad("header", f"whitespace before the colon of {_shown(name)}")
    if not _FIELD_NAME.fullmatch(name):
        return _bad("header", f"character not allowed in header name {_shown(name)}")
    if _VALUE_CONTROL.search(value):
        return _bad("header", f"control character in the value of {_shown(name)}")
    return _bad("header", f"malformed header line {_shown(name)}")  # pragma: no cover


def framing_problem(headers: Message) -> Rejection | None:
    """What is wrong with the body framing of a parsed head (RFC 9112 section 6), or ``None``."""
    encodings = headers.get_all("Transfer-Encoding") or []
    lengths = headers.get_all("Content-Length") or []
    if encodings:
        codings = [c.strip(" \t").lower() for value in encodings for c in value.split(",")]
        if codings != ["chunked"]:
            return _bad("body-framing", "Transfer-Encoding must be chunked alone (nothing else)")
        if lengths:
            return _bad("body-framing", "both Content-Length and Transfer-Encoding: send one")
    values = {v.strip(" \t") for value in lengths for v in str(value).split(",")}
    if values and (len(values) > 1 or not _DECIMAL.fullmatch(next(iter(values)))):
        return _bad("body-framing", "malformed Content-Length (one decimal number)")
    return None


class HeadReader:
    """The request stream while ``http.server`` reads the header lines; checks each one.

    The first problem is kept in :attr:`problem`; from then on (or past
    :data:`MAX_HEAD_BYTES`) it reports the end of the head, so nothing more is parsed.
    """

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.size = 0
        self.problem: Rejection | None = None

    def readline(self, limit: int = -1) -> bytes:
        """The next header line, as the wrapped stream gives it (``CRLF`` after a problem)."""
        if self.problem is not None:
            return b"\r\n"
        line = bytes(self.raw.readline(limit))
        self.size += len(line)
        if self.size > MAX_HEAD_BYTES:
            self.problem = _bad(
                "head-too-large", f"request head larger than {MAX_HEAD_BYTES} bytes", 431
            )
        elif len(line) != limit:  # a line at the limit: http.client answers 431 itself
            self.problem = field_line_problem(line)
        return line if self.problem is None else b"\r\n"


class DechunkedBody(DechunkedInput):
    """Werkzeug's ``Transfer-Encoding: chunked`` reader, with strict chunk sizes.

    A chunk-size line must be 1-16 hex digits (optionally an extension) and CRLF: Werkzeug's
    takes whatever ``int(line, 16)`` does (``0x1f``, ``+a``, ``1_0``). A chunk larger than
    ``limit`` bytes is refused at once (413) instead of waiting for data that will not fit.
    """

    def __init__(self, rfile: Any, limit: int) -> None:
        super().__init__(rfile)
        self.limit = limit

    def read_chunk_len(self) -> int:
        """The next chunk's size; ``OSError`` (400) if malformed, 413 if too large."""
        line = self._rfile.readline(MAX_CHUNK_LINE)
        match = _CHUNK_SIZE.fullmatch(line)
        if match is None:
            shown = _shown(line.rstrip(b"\r\n"))
            raise OSError(f"malformed chunk size {shown}")
        size = int(match[1], 16)
        if size > self.limit:
            raise RequestEntityTooLarge(f"a chunk of {size} bytes; at most {self.limit}")
        return size
