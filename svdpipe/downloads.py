"""HTTP(S) downloads that a hostile manifest cannot turn against us.

* **Address policy.** Every connection (the first request and each redirect) resolves the host, refuses it when
  any of its addresses is loopback, private, link-local, multicast, reserved or unspecified (unless private hosts
  are allowed) and then connects to the address it checked, so a second DNS answer cannot swap in another one.
  Connections are direct: proxies from the environment are not used, because through a proxy the peer we could
  check would be the proxy.
* **Deadline.** One wall-clock limit covers the whole download, retries included. A watchdog shuts the sockets
  down when it passes, so a server trickling a byte a second cannot hold a batch.
* **Size limit** (declared and counted) and **retries with back-off** on transient failures only.

Errors are ``FetchError``; ``svdpipe.sources.fetch`` removes the URL's secrets from their messages.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import threading
import time
from pathlib import Path

import requests
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.connection import create_connection

RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
MAX_REDIRECTS = 5
_CHUNK = 64 * 1024


class FetchError(Exception):
    """An input that could not be brought here; the message becomes its rejection reason."""


class RefusedAddress(FetchError):
    """The host resolves to an address the policy refuses; never retried."""


def non_public(ip: str) -> str | None:
    """Why ``ip`` is not a public unicast address (None when it is)."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for kind in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved"):
        if getattr(addr, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if addr.is_global else "not globally routable"


def check_host(host: str, port: int, allow_private: bool) -> list[str]:
    """The addresses of ``host``; raises ``RefusedAddress`` when one of them is refused."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise FetchError(f"cannot resolve host {host!r}: {e.strerror or e}") from e
    addrs = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        for ip in addrs:
            why = non_public(ip)
            if why:
                raise RefusedAddress(
                    f"refused: host {host!r} resolves to {ip} ({why}); set ingest.allow_private_hosts=true to "
                    "fetch from private networks"
                )
    return addrs


class _Guard:
    """Per download: the address policy applied at connect time, and the deadline watchdog over its sockets."""

    def __init__(self, allow_private: bool, deadline_s: float):
        self.allow_private = allow_private
        self.end = time.monotonic() + deadline_s
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(deadline_s, self.expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def connect(self, host: str, port: int, timeout, source_address, socket_options) -> socket.socket:
        last: OSError | None = None
        for ip in check_host(host, port, self.allow_private):
            if self.expired:
                break
            try:
                sock = create_connection((ip, port), timeout, source_address=source_address,
                                         socket_options=socket_options)
            except OSError as e:
                last = e
                continue
            with self._lock:
                self._sockets.append(sock)
                if self.expired:
                    sock.shutdown(socket.SHUT_RDWR)
            return sock
        raise last or OSError(f"no address of {host} could be reached in time")

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv; close() alone would not
                except OSError:
                    pass

    def close(self) -> None:
        self._timer.cancel()


def _session(guard: _Guard) -> requests.Session:
    """A session whose connections (redirects too) go through ``guard``."""

    def conn_cls(base):
        def _new_conn(self):
            return guard.connect(self._dns_host, self.port, self.timeout, self.source_address, self.socket_options)
        return type(f"Guarded{base.__name__}", (base,), {"_new_conn": _new_conn})

    pools = {
        "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": conn_cls(HTTPConnection)}),
        "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": conn_cls(HTTPSConnection)}),
    }

    class Adapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

    session = requests.Session()
    session.trust_env = False  # no environment proxy: the checked address must be the peer
    session.max_redirects = MAX_REDIRECTS
    for prefix in ("http://", "https://"):
        session.mount(prefix, Adapter(max_retries=0))
    return session


def download(url: str, dest: Path, max_bytes: int, timeout_s: float, retries: int, deadline_s: float,
             allow_private: bool) -> None:
    """GET ``url`` into ``dest`` (written whole or not at all)."""
    guard = _Guard(allow_private, deadline_s)
    part = dest.with_name(dest.name + ".part")
    last, got = "no attempt made", 0
    try:
        with _session(guard) as session:
            for attempt in range(retries + 1):
                if attempt:
                    time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0, max(guard.remaining(), 0)))
                if guard.expired:
                    break
                got = 0
                try:
                    wait = max(min(timeout_s, guard.remaining()), 0.01)
                    with session.get(url, stream=True, timeout=(wait, timeout_s),
                                     headers={"Accept-Encoding": "identity"}) as r:
                        if r.status_code in RETRY_STATUS:
                            last = f"HTTP {r.status_code}"
                            continue
                        if r.status_code >= 400:
                            raise FetchError(f"download failed: HTTP {r.status_code} from {url}")
                        declared = int(r.headers.get("Content-Length") or 0)
                        if declared > max_bytes:
                            raise FetchError(f"download refused: {declared} bytes declared, over the {max_bytes}-byte "
                                             "limit (ingest.max_input_bytes)")
                        with open(part, "wb") as f:
                            for chunk in r.iter_content(_CHUNK):
                                got += len(chunk)
                                if got > max_bytes:
                                    raise FetchError(f"download aborted: more than {max_bytes} bytes "
                                                     "(ingest.max_input_bytes)")
                                f.write(chunk)
                        if guard.expired:
                            break
                        if declared and got < declared:
                            last = f"connection closed after {got} of {declared} bytes"
                            continue
                        shutil.move(part, dest)
                        return
                except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
                    last = f"{type(e).__name__}: {e}"
                except requests.TooManyRedirects as e:
                    raise FetchError(f"download refused: more than {MAX_REDIRECTS} redirects") from e
                except (requests.exceptions.InvalidSchema, requests.exceptions.InvalidURL) as e:
                    raise FetchError(f"download refused: {e}") from e
    finally:
        guard.close()
        part.unlink(missing_ok=True)
    if guard.expired:
        raise FetchError(f"download did not finish within {deadline_s:g} s (ingest.download_deadline_s); "
                         f"{got} bytes received")
    raise FetchError(f"download failed after {retries + 1} attempts: {last}")
