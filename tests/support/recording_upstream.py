"""A real HTTP/1.1 upstream that keeps every byte it receives, for injection and smuggling
tests: what an upstream saw is read from its raw input, not from a parser that might have
refused (and so hidden) a malformed request.

It runs in a thread of the test process on 127.0.0.1 and answers each request
`200 ok` (keep-alive), or, for `/bad-response-headers`, a response with headers a viewer must
not get.
"""

from __future__ import annotations

import socket
import socketserver
import threading

MAX_HEAD = 1024 * 1024
BAD_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Length: 2\r\n"
    b"Connection: keep-alive, X-Hop\r\n"
    b"X-Hop: secret\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"Proxy-Authenticate: Basic\r\n"
    b"X-Ctl: a\x01b\r\n"
    b"X-Fine: yes\r\n"
    b"\r\nok"
)
OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class RecordingUpstream:
    """`start()` returns the port; `received()` is every byte of every connection so far;
    `requests` the request heads (request line + headers) it parsed, in order."""

    def __init__(self) -> None:
        self.connections: list[bytearray] = []
        self.requests: list[bytes] = []
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingTCPServer | None = None

    def start(self) -> int:
        recorder = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                recorder._serve(self.request)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return int(server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def received(self) -> bytes:
        with self._lock:
            return b"".join(bytes(c) for c in self.connections)

    def heads(self) -> list[bytes]:
        with self._lock:
            return list(self.requests)

    # ----- one connection
    def _serve(self, sock: socket.socket) -> None:
        raw = bytearray()
        with self._lock:
            self.connections.append(raw)
        reader = _Reader(sock, raw, self._lock)
        while True:
            head = reader.until(b"\r\n\r\n", MAX_HEAD)
            if head is None:
                return
            with self._lock:
                self.requests.append(head)
            lines = head.decode("latin-1").split("\r\n")
            fields = [line.split(":", 1) for line in lines[1:] if ":" in line]
            headers = {k.strip().lower(): v.strip() for k, v in fields}
            if headers.get("transfer-encoding", "").lower() == "chunked":
                if not reader.chunked():
                    return
            elif "content-length" in headers:
                if reader.exactly(int(headers["content-length"])) is None:
                    return
            target = lines[0].split(" ")[1] if " " in lines[0] else ""
            sock.sendall(BAD_RESPONSE if target.endswith("/bad-response-headers")
                         else OK_RESPONSE)


class _Reader:
    def __init__(self, sock: socket.socket, raw: bytearray, lock: threading.Lock) -> None:
        self.sock = sock
        self.raw = raw
        self.lock = lock
        self.buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        with self.lock:
            self.raw += data
        self.buf += data
        return True

    def until(self, mark: bytes, limit: int) -> bytes | None:
        while mark not in self.buf:
            if len(self.buf) > limit or not self._fill():
                return None
        head, self.buf = self.buf.split(mark, 1)
        return head

    def exactly(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not self._fill():
                return None
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def chunked(self) -> bool:
        while True:
            line = self.until(b"\r\n", 1024)
            if line is None:
                return False
            size = int(line.split(b";")[0], 16)
            if size == 0:
                return self.until(b"\r\n", MAX_HEAD) is not None  # (no trailers expected)
            if self.exactly(size + 2) is None:
                return False
