"""A real HTTP server on 127.0.0.1 for download tests, with Range support and faults.

Each served path holds bytes and a queue of faults, one consumed per request:

- "ok": answer normally (also what an empty queue means)
- "drop": send the headers and half the body, then close the connection
- "stall": send half the body, then go silent for `stall_s` before closing
- "ignore_range": answer 200 with the whole body even to a Range request
- "503", "500", "429": answer with that status

`slow_s` > 0 sends the body in small chunks with that pause between them.
Every request is recorded (path, Range header, status) so tests can assert that a
resume really used a Range request.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


@dataclass
class Resource:
    data: bytes
    faults: list[str] = field(default_factory=list)
    slow_s: float = 0.0
    chunk_bytes: int = 4096
    stall_s: float = 1.0


@dataclass(frozen=True)
class Request:
    path: str
    range: str | None
    status: int


class LocalServer:
    """Serve registered bytes over HTTP on an ephemeral port; use as a context manager."""

    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # keep test output clean

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                outer._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add(
        self,
        path: str,
        data: bytes,
        faults: Iterable[str] = (),
        *,
        slow_s: float = 0.0,
        stall_s: float = 1.0,
    ) -> str:
        """Serve `data` at `path` (e.g. "/a/b.zip"); return its URL."""
        self.resources[path] = Resource(data, list(faults), slow_s=slow_s, stall_s=stall_s)
        return self.base_url + path

    def requests_for(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------ request handling

    def _record(self, handler: BaseHTTPRequestHandler, status: int) -> None:
        with self._lock:
            self.requests.append(Request(handler.path, handler.headers.get("Range"), status))

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        resource = self.resources.get(h.path)
        if resource is None:
            self._record(h, 404)
            h.send_error(404, "Not Found")
            return
        with self._lock:
            fault = resource.faults.pop(0) if resource.faults else "ok"
        if fault.isdigit():
            self._record(h, int(fault))
            h.send_error(int(fault))
            return
        data = resource.data
        status, body, headers = 200, data, {}
        range_header = h.headers.get("Range")
        if range_header and fault != "ignore_range":
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header.strip())
            if match is None:
                self._record(h, 400)
                h.send_error(400, "bad Range")
                return
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            if start >= len(data):
                self._record(h, 416)
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            end = min(end, len(data) - 1)
            status, body = 206, data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._record(h, status)
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Accept-Ranges", "bytes")
        for key, value in headers.items():
            h.send_header(key, value)
        h.end_headers()
        try:
            if fault in ("drop", "stall"):
                h.wfile.write(body[: len(body) // 2])
                h.wfile.flush()
                if fault == "stall":
                    time.sleep(resource.stall_s)
                h.close_connection = True
                h.connection.shutdown(socket.SHUT_RDWR)
                return
            step = resource.chunk_bytes if resource.slow_s else len(body) or 1
            for i in range(0, len(body), step):
                h.wfile.write(body[i : i + step])
                if resource.slow_s:
                    h.wfile.flush()
                    time.sleep(resource.slow_s)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. its timeout); nothing to do
