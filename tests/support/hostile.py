"""Hostile peers for the payload tests: a server that trickles its answer."""

from __future__ import annotations

import socket
import threading


class Trickle(threading.Thread):
    """A server that sends its answer one byte every 0.2 s: headers, or a body."""

    def __init__(self, headers_too: bool) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.headers_too = headers_too
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        try:
            conn.recv(4096)
            if not self.headers_too:
                conn.sendall(head)
                head = b""
            for byte in head + b"x" * 1000:
                if self.stop.wait(0.2):
                    break
                conn.sendall(bytes([byte]))
        except OSError:
            pass
        finally:
            conn.close()
