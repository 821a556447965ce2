"""Running the app under uvicorn: in a background thread (tests, notebooks) or from the command line.

:class:`ServerThread` starts a real uvicorn server on 127.0.0.1 and a free port (port 0: the OS
picks one), waits until it accepts connections and shuts it down cleanly on ``stop()`` / leaving the
``with`` block. Introduced in Chapter 13.
"""

from __future__ import annotations

import ipaddress
import threading
import time

import uvicorn

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # a background thread cannot own the signal handlers
        pass


def uvicorn_config(app, host: str = LOOPBACK, port: int = 0, log_level: str = "warning") -> uvicorn.Config:
    """uvicorn settings shared by the thread and the command line: no access log, header cap, quick shutdown."""
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
                          timeout_graceful_shutdown=3, h11_max_incomplete_event_size=16_384, server_header=False)


def bound_port(server: uvicorn.Server) -> int:
    """The port a started uvicorn server listens on (useful with port 0)."""
    for srv in server.servers:
        for sock in srv.sockets:
            return sock.getsockname()[1]
    raise RuntimeError("the server has no listening socket")


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 in a daemon thread; ``url`` once started."""

    def __init__(self, app, host: str = LOOPBACK, port: int = 0, startup_timeout: float = 30.0) -> None:
        self.server = _Server(uvicorn_config(app, host, port))
        self.host, self.startup_timeout = host, startup_timeout
        self.thread = threading.Thread(target=self.server.run, name="scratchlm-uvicorn", daemon=True)
        self.url = ""

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not start (see the log above)")
            time.sleep(0.02)
        self.url = f"http://{self.host}:{bound_port(self.server)}"
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
