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

STORED = re.compile(rb"HTTP/1\.[01] 2\d\d ")  # a final answer (not "100 Continue") that stored it


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
                # Whether the request had gone out is read before this chunk is forwarded: a chunk read earlier
                # answers the request before it, and once forwarded the client may send the armed request at once.
                # Read after, that earlier answer would close the gate between the armed request's headers and its
                # body, which would then never reach the server.
                # A success only: an error answer is retried by the client, and the retry must pass.
                if armed.is_set() and STORED.search(chunk):
                    self.closed.set()  # before forwarding: the client's next request is already held
                dst.sendall(chunk)
        except OSError:
            pass
