"""A TCP gate in front of the test S3 server that closes by itself once a chosen request has passed through.

Kill-and-resume tests must kill a training run after its first checkpoint and before its last step. Polling the
bucket and then killing races the run: on a loaded machine the poll can wake after the run finished. Routed through
this gate, the run cannot outpace the test: the gate forwards the request that writes the first ``latest`` pointer and
its answer, then holds every request, so the run stalls at its next S3 access (the next checkpoint upload at the latest)
until the test kills it.
"""

from __future__ import annotations

import re
import socket
import threading
from urllib.parse import urlsplit

__all__ = ["S3Gate"]

FINAL_STATUS = re.compile(rb"HTTP/1\.[01] [2-5]\d\d ")


class S3Gate:
    """``with S3Gate(endpoint, rb"PUT [^ ]*/latest[ ?]") as gate:`` then point a process at ``gate.url``;
    ``gate.closed.wait()`` returns once a request matching the pattern was answered and the gate shut."""

    def __init__(self, endpoint: str, close_after: bytes):
        u = urlsplit(endpoint)
        self._upstream = (u.hostname, u.port)
        self._pattern = re.compile(close_after)
        self.closed = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._sockets: list[socket.socket] = [self._server]
        self._lock = threading.Lock()

    def __enter__(self) -> S3Gate:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            for s in self._sockets:
                try:
                    s.close()
                except OSError:
                    pass

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            with self._lock:
                self._sockets += [client, upstream]
            armed = threading.Event()  # this connection carried the request: its answer closes the gate
            threading.Thread(target=self._requests, args=(client, upstream, armed), daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, client, armed), daemon=True).start()

    def _requests(self, src: socket.socket, dst: socket.socket, armed: threading.Event) -> None:
        tail = b""  # the end of the previous chunk: a request line split between two reads still matches
        try:
            while chunk := src.recv(65536):
                if self.closed.is_set():
                    return  # held: nothing more reaches the server
                dst.sendall(chunk)
                if self._pattern.search(tail + chunk):
                    armed.set()
                tail = chunk[-256:]
        except OSError:
            pass

    def _responses(self, src: socket.socket, dst: socket.socket, armed: threading.Event) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
                # The server's final answer (not "100 Continue") to the request: it is stored, the gate closes.
                if armed.is_set() and FINAL_STATUS.search(chunk):
                    self.closed.set()
        except OSError:
            pass
