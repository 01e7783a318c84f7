"""An HTTP reverse proxy put in front of the test store (SeaweedFS's S3 port) for a runner.

It forwards every request unchanged (SigV4 signs the Host header, which is passed through),
records each one (method, path, status, when it started and ended, and the body of JSON
PUTs) so tests can check the order of a runner's writes, and answers the requests a rule
picks with an S3 error instead of forwarding them: a store that fails transiently, by
construction, only where the test says; or, with ``conditional_puts`` off, answers a
conditional PUT (If-Match, If-None-Match) as a store that has none does.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

# Not forwarded: hop-by-hop headers, and the ones this proxy sets itself.
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
        "expect", "content-length"}

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate. (fault proxy)</Message></Error>")
# S3's documented NotImplemented error (501), as stores without conditional writes answer them.
NOT_IMPLEMENTED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NotImplemented</Code>'
                   b"<Message>A header you provided implies functionality that is not implemented</Message>"
                   b"</Error>")


@dataclass
class Request:
    method: str
    path: str  # unquoted, without the query
    status: int
    started: float  # time.monotonic()
    ended: float
    body: bytes = b""  # kept for JSON PUTs (manifests)
    faulted: bool = False


class FaultProxy:
    """Serve on a free loopback port; ``fail(method, path, body)`` True answers 503 SlowDown."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.fail: Callable[[str, str, bytes], bool] = lambda method, path, body: False
        self.conditional_puts = True
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def seen(self, method: str | None = None, prefix: str = "") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if (method is None or r.method == method) and r.path.startswith(prefix)]

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in _HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _proxy(self) -> None:
                started = time.monotonic()
                body = self._body()
                path = unquote(urlsplit(self.path).path)
                keep = body if self.command == "PUT" and path.endswith(".json") else b""
                if proxy.fail(self.command, path, body):
                    proxy._record(Request(self.command, path, 503, started, time.monotonic(), keep, faulted=True))
                    self._reply(503, [("Content-Type", "application/xml")], SLOW_DOWN)
                    return
                if (self.command == "PUT" and not proxy.conditional_puts
                        and ("If-Match" in self.headers or "If-None-Match" in self.headers)):
                    proxy._record(Request(self.command, path, 501, started, time.monotonic(), keep, faulted=True))
                    self._reply(501, [("Content-Type", "application/xml")], NOT_IMPLEMENTED)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST")
                                 else None, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    status, reply_headers = response.status, response.getheaders()
                finally:
                    conn.close()
                # Recorded before the client hears back: ``ended`` is when the store had it.
                proxy._record(Request(self.command, path, status, started, time.monotonic(), keep))
                self._reply(status, reply_headers, data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _proxy

        return Handler
