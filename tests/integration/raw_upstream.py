"""A tiny raw-socket HTTP/1.1 upstream that answers with scripted bytes (standard library only).

Envoy's own backends cannot send a garbage status line, an interim 1xx before the final
response, or reset a connection at a chosen moment; this server can. Each request is read in
full (headers, then a Content-Length or chunked body), then the current script runs:

    up = RawUpstream("canary").start()
    up.respond(b"HTTP/1.1 100 Continue\\r\\n\\r\\n", ok_response("canary"))
    up.respond(b"HTTP/1.1 200 OK\\r\\ncontent-length: 10\\r\\n\\r\\nabc", RESET)
    up.respond(HOLD)          # never answer: wait until the peer gives up, then close

A script is a sequence of steps: bytes are sent as they are; CLOSE closes the connection (FIN),
RESET aborts it (RST, SO_LINGER 0), HOLD waits until the peer closes (or `hold_timeout`) and
then closes. A script that ends without closing keeps the connection for the next request.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Optional, Sequence, Union

CLOSE = "close"
RESET = "reset"
HOLD = "hold"
Step = Union[bytes, str]

MAX_HEAD = 1 << 20  # bytes of request head we accept before giving up on a connection


def ok_response(served_by: str, status: int = 200, reason: str = "OK", body: bytes = b"ok") -> bytes:
    """A plain keep-alive response carrying x-served-by, as envoy/backends.yaml's backends do."""
    return (f"HTTP/1.1 {status} {reason}\r\nx-served-by: {served_by}\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


def abort(sock: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER on, timeout 0)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class RawUpstream:
    """One listening socket on 127.0.0.1, a thread per connection, a shared mutable script."""

    def __init__(self, name: str, hold_timeout: float = 15.0):
        self.name = name
        self.hold_timeout = hold_timeout
        self._script: tuple[Step, ...] = (ok_response(name),)
        self._lock = threading.Condition()
        self._requests: list[bytes] = []  # heads of the requests received, in order
        self._held = 0  # connections a HOLD step released because the peer closed
        self._conns: set[socket.socket] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stopped = threading.Event()

    # -- control -----------------------------------------------------------
    def start(self) -> "RawUpstream":
        self._listener.listen(128)
        threading.Thread(target=self._accept_loop, name=f"raw-{self.name}", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.close()
            except OSError:
                pass

    def respond(self, *steps: Step) -> None:
        """The script every following request gets (a request already read keeps its own)."""
        with self._lock:
            self._script = tuple(steps)

    def reset_script(self) -> None:
        self.respond(ok_response(self.name))

    @property
    def requests(self) -> list[bytes]:
        with self._lock:
            return list(self._requests)

    @property
    def held_released(self) -> int:
        with self._lock:
            return self._held

    def wait_requests(self, n: int, timeout: float = 10.0) -> list[bytes]:
        """Wait until at least n requests have been read in total; returns their heads."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._requests) >= n, timeout):
                raise AssertionError(f"raw upstream {self.name}: {len(self._requests)} requests "
                                     f"after {timeout}s, wanted {n}")
            return list(self._requests)

    def wait_held_released(self, n: int, timeout: float = 10.0) -> None:
        """Wait until n HOLD steps in total ended because the peer (Envoy) closed."""
        with self._lock:
            if not self._lock.wait_for(lambda: self._held >= n, timeout):
                raise AssertionError(f"raw upstream {self.name}: {self._held} held connections "
                                     f"closed by the peer after {timeout}s, wanted {n}")

    # -- serving -----------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                head, buf = self._read_request(conn, buf)
                if head is None:
                    return
                with self._lock:
                    self._requests.append(head)
                    script = self._script
                    self._lock.notify_all()
                if not self._run(conn, script):
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def _run(self, conn: socket.socket, script: Sequence[Step]) -> bool:
        """Plays one script; False when the connection is finished."""
        for step in script:
            if isinstance(step, bytes):
                conn.sendall(step)
            elif step == CLOSE:
                conn.shutdown(socket.SHUT_RDWR)
                return False
            elif step == RESET:
                with self._lock:
                    self._conns.discard(conn)
                abort(conn)
                return False
            elif step == HOLD:
                conn.settimeout(self.hold_timeout)
                try:
                    while conn.recv(65536):
                        pass
                    peer_closed = True
                except (socket.timeout, OSError):
                    peer_closed = False
                with self._lock:
                    self._held += peer_closed
                    self._lock.notify_all()
                return False
            else:
                raise ValueError(f"unknown script step {step!r}")
        return True

    @staticmethod
    def _recv_more(conn: socket.socket, buf: bytes) -> Optional[bytes]:
        chunk = conn.recv(65536)
        return buf + chunk if chunk else None

    def _read_request(self, conn: socket.socket, buf: bytes) -> tuple[Optional[bytes], bytes]:
        """One request: (head, leftover bytes), or (None, b"") when the peer closed."""
        while b"\r\n\r\n" not in buf:
            if len(buf) > MAX_HEAD:
                return None, b""
            more = self._recv_more(conn, buf)
            if more is None:
                return None, b""
            buf = more
        head, _, rest = buf.partition(b"\r\n\r\n")
        fields = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            while b"0\r\n\r\n" not in rest:  # enough for the bodies these tests send
                more = self._recv_more(conn, rest)
                if more is None:
                    return None, b""
                rest = more
            _, _, rest = rest.partition(b"0\r\n\r\n")
        else:
            length = int(fields.get(b"content-length", b"0") or b"0")
            while len(rest) < length:
                more = self._recv_more(conn, rest)
                if more is None:
                    return None, b""
                rest = more
            rest = rest[length:]
        return head, rest


def wait_until(pred, timeout: float = 10.0, what: str = "condition", interval: float = 0.02):
    """Poll pred until truthy (returned); AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
