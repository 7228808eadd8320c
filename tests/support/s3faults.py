"""A fault-injecting HTTP proxy in front of the loopback S3 server (moto), for S3 fault tests.

Real clients (boto3, the stores) talk real HTTP to it; it forwards every request to moto unchanged, except
the ones a test has armed a rule for: the next N requests of one method whose path matches a pattern get

* ``slowdown``: ``503 SlowDown`` with S3's XML error body (what S3 answers when throttling a prefix);
* ``reset``: the connection is reset (RST) before any response byte;
* ``reset_body``: the real response's headers and half its body, then a reset (a dropped connection
  mid-download: the body is short of its ``Content-Length``);
* ``stall``: nothing at all for ``stall_s`` seconds (beyond the client's read timeout), then a close.

Bound to 127.0.0.1 only. ``s3_fault_proxy`` stops it (and releases stalled handlers) on exit.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from airflow_bigdata_ai.shards import S3Options

FAULTS = ("slowdown", "reset", "reset_body", "stall")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
SLOWDOWN_XML = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>FAULTPROXY</RequestId></Error>"
)


@dataclass
class FaultRule:
    """Answer the next ``times`` requests of ``method`` whose path matches ``pattern`` with ``fault``
    (``times=None``: every one, a persistent fault). ``fired`` counts the requests it answered."""

    fault: str
    pattern: str = ""
    method: str = "GET"
    times: int | None = 1
    stall_s: float = 5.0
    fired: int = 0

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {self.fault!r}")


@dataclass
class S3FaultProxy:
    """The proxy's state, shared with its handler threads: the upstream, the rules and a request log."""

    upstream: str
    rules: list[FaultRule] = field(default_factory=list)
    seen: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    endpoint_url: str = ""

    def inject(
        self, fault: str, pattern: str = "", *, method: str = "GET", times: int | None = 1, stall_s: float = 5.0
    ) -> FaultRule:
        """Arm a rule (the first armed rule that matches a request answers it)."""
        rule = FaultRule(fault, pattern, method, times, stall_s)
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()
            self.seen.clear()

    def requests(self, method: str, pattern: str = "") -> int:
        """How many requests of ``method`` with a path matching ``pattern`` reached the proxy."""
        with self.lock:
            return sum(1 for m, path in self.seen if m == method and re.search(pattern, path))

    def take(self, method: str, path: str) -> FaultRule | None:
        """Log a request and return the rule that answers it, if one is armed (consuming one of its times)."""
        with self.lock:
            self.seen.append((method, path))
            for rule in self.rules:
                if rule.method == method and re.search(rule.pattern, path) and (rule.times is None or rule.times > 0):
                    if rule.times is not None:
                        rule.times -= 1
                    rule.fired += 1
                    return rule
        return None

    def options(self, base: S3Options) -> S3Options:
        """``base`` (credentials, timeouts, retries) pointed at the proxy instead of the server."""
        return replace(base, endpoint_url=self.endpoint_url)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects
    server: _ProxyServer

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a test's output should show its assertions, not every request."""

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise NotImplementedError("chunked request bodies are not forwarded")
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reset(self) -> None:
        """Close with SO_LINGER 0: the kernel sends RST, the client sees 'connection reset by peer'."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _forward(self, method: str, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        upstream = urlsplit(self.server.state.upstream)
        conn = http.client.HTTPConnection(upstream.hostname or "127.0.0.1", upstream.port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            conn.request(method, self.path, body=body if body or method in ("PUT", "POST") else None, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP], data
        finally:
            conn.close()

    def _handle(self) -> None:
        method = self.command
        body = self._body()
        state = self.server.state
        rule = state.take(method, self.path)
        if rule is not None and rule.fault == "reset":
            self._reset()
            return
        if rule is not None and rule.fault == "stall":
            state.stopping.wait(rule.stall_s)  # released at once when the proxy stops
            self._reset()
            return
        if rule is not None and rule.fault == "slowdown":
            self._send(503, [("Content-Type", "application/xml")], SLOWDOWN_XML, method)
            return
        status, headers, data = self._forward(method, body)
        if rule is not None and rule.fault == "reset_body":
            self._send(status, headers, data, method, cut=max(1, len(data) // 2))
            self._reset()
            return
        self._send(status, headers, data, method)

    def _send(
        self, status: int, headers: list[tuple[str, str]], data: bytes, method: str, cut: int | None = None
    ) -> None:
        self.send_response_only(status)
        for key, value in headers:
            if key.lower() not in ("content-length", "date", "server"):
                self.send_header(key, value)
        if method == "HEAD":
            length = next((v for k, v in headers if k.lower() == "content-length"), "0")
            self.send_header("Content-Length", length)
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data if cut is None else data[:cut])
        self.wfile.flush()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:  # the socket was reset on purpose
            pass


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: S3FaultProxy) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that gave up (its read timeout) while a handler stalled is expected: no traceback."""


@contextmanager
def s3_fault_proxy(upstream: S3Options) -> Iterator[S3FaultProxy]:
    """Start the proxy on 127.0.0.1 in front of ``upstream.endpoint_url``; stop it and its handlers on exit."""
    assert upstream.endpoint_url, "the proxy needs the S3 server's endpoint"
    state = S3FaultProxy(upstream.endpoint_url)
    server = _ProxyServer(state)
    state.endpoint_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
