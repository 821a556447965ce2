"""Running the app under uvicorn: in a background thread (tests, notebooks) or from the command line.

:class:`ServerThread` starts a real uvicorn server on 127.0.0.1 and a free port (port 0: the OS
picks one), waits until it accepts connections and shuts it down cleanly on ``stop()`` / leaving the
``with`` block. :class:`ServerProcess` runs the command line ``python -m scratchlm.serve`` as a
child process instead (what a notebook does). Introduced in Chapter 13.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

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
        self.app = app
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


def _drain(pipe, put) -> None:
    """Read a child's pipe to its end (so it never blocks on a full pipe), then close it."""
    with pipe:
        for line in pipe:
            put(line)


class ServerProcess:
    """``python -m scratchlm.serve`` in a child process on 127.0.0.1 and a free port (a notebook's server).

    ``start()`` returns once the server printed its address and answers ``/health``; ``stop()``
    (also run at interpreter exit, so a failed cell cannot leave it behind) sends SIGTERM and waits.
    """

    def __init__(self, model_dir: str | os.PathLike, *args: str, startup_timeout: float = 120.0) -> None:
        self.model_dir, self.args, self.startup_timeout = str(model_dir), list(args), startup_timeout
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.returncode: int | None = None

    def start(self) -> ServerProcess:
        import httpx

        root = str(Path(__file__).resolve().parents[2])  # the checkout holding this scratchlm
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        cmd = [sys.executable, "-m", "scratchlm.serve", "--model", self.model_dir, "--port", "0", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        atexit.register(self.stop)
        lines: queue.Queue[str] = queue.Queue()
        self.stderr_lines: list[str] = []
        self._readers = [threading.Thread(target=_drain, args=(self.proc.stdout, lines.put), daemon=True),
                         threading.Thread(target=_drain, args=(self.proc.stderr, self.stderr_lines.append),
                                          daemon=True)]
        for reader in self._readers:
            reader.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.url:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                line = ""
            if line.startswith("listening on "):
                self.url = line.split()[-1]
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not start: " + "".join(self.stderr_lines)[-2000:].strip())
        while httpx.get(self.url + "/health", timeout=10).status_code != 200:  # pragma: no cover - ready at once
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then wait (SIGKILL after ``timeout``); the exit status (-15: stopped by SIGTERM)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.returncode = self.proc.returncode
            for reader in getattr(self, "_readers", []):
                reader.join(5)  # they end at end of file, now that the process is gone
        return self.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
