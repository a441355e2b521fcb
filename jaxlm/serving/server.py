"""`jaxlm serve`: the OpenAI-compatible server (app.py) on uvicorn, with the engine's thread and a
bounded drain.

    with Server(ServingEngine(lm), lm, port=0) as server:     # a background thread, on a free port
        OpenAI(base_url=server.url + "/v1", api_key="unused").completions.create(...)

The socket is bound before uvicorn starts, so a port in use is one line (exit 2), and port 0 picks a
free port (`Server.port` says which). SIGTERM or Ctrl-C drains: /health answers 503 and new /v1
requests get 503 at once, running requests get up to `drain_s` seconds to finish, and what is still
running then is cancelled (its stream ends with finish_reason "cancelled"); then uvicorn stops and the
process exits 0. uvicorn's own handler would re-raise the signal after its shutdown (exit 143), so
`handle_exit` is replaced. A second signal stops at once.

`Server(...).start()` runs the same in a background thread (tests, notebooks, the README example):
`stop()` drains the same way and joins. `warmup=True` compiles the engine's step programs
(`ServingEngine.warmup`) before the port answers, so no request pays a compile; it costs start-up
time (seconds per program on a CPU), so it is off by default.
"""

from __future__ import annotations

import errno
import socket
import threading
from pathlib import Path

import uvicorn

from jaxlm.errors import JaxlmError
from jaxlm.serving.app import ServerState, build_app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0 = a free port), or a JaxlmError naming the problem."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        why = "is in use; stop the other server or pick another --port" if e.errno == errno.EADDRINUSE \
            else f"cannot be bound ({e.strerror}); check --host and --port"
        raise JaxlmError(f"{host}:{port} {why}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _Uvicorn(uvicorn.Server):
    """uvicorn whose signal handler drains the engine first and does not re-raise the signal."""

    def __init__(self, config, on_signal):
        super().__init__(config)
        self.on_signal = on_signal

    def handle_exit(self, sig, frame) -> None:
        if self.should_exit or getattr(self, "_draining", False):
            self.force_exit = True
            self.should_exit = True
            return
        self._draining = True
        self.on_signal()


class Server:
    """One engine behind the HTTP API on host:port; `run()` blocks (the CLI), `start()` backgrounds."""

    def __init__(self, engine, lm, *, model_name: str = "jaxlm", host: str = "127.0.0.1", port: int = 8000,
                 api_key: str | None = None, drain_s: float = 30.0, log_level: str = "warning",
                 warmup: bool = False):
        self.engine, self.drain_s, self.warmup = engine, drain_s, warmup
        self.state = ServerState(engine, lm, model_name, api_key)
        self.sock = bind(host, port)
        self.host, self.port = host, self.sock.getsockname()[1]
        config = uvicorn.Config(build_app(self.state), log_level=log_level, timeout_graceful_shutdown=5,
                                lifespan="off", access_log=False)
        self.uvicorn = _Uvicorn(config, self.drain)
        self._thread: threading.Thread | None = None
        self._drained = threading.Event()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        """Serve until SIGTERM / Ctrl-C (then drain) or stop()."""
        if self.warmup:
            self.engine.warmup()
        self.engine.start()
        try:
            self.uvicorn.run(sockets=[self.sock])
        finally:
            if not self._drained.is_set():  # stopped without a drain (an error in uvicorn)
                self.engine.shutdown(timeout_s=0)
            self.sock.close()

    def start(self) -> "Server":
        """run() in a daemon thread; returns once the server answers."""
        self._thread = threading.Thread(target=self.run, name="jaxlm-serve", daemon=True)
        self._thread.start()
        while not self.uvicorn.started:
            if not self._thread.is_alive():
                raise JaxlmError(f"the server on {self.url} did not start")
            self._thread.join(0.01)
        return self

    def drain(self) -> None:
        """Stop taking requests, let running ones finish for up to drain_s, cancel the rest, then exit.
        Runs in its own thread: it is called from a signal handler on the event loop's thread."""
        self.state.draining = True

        def work():
            try:
                self.engine.shutdown(timeout_s=self.drain_s)
            finally:
                self._drained.set()
                self.uvicorn.should_exit = True

        threading.Thread(target=work, name="jaxlm-drain", daemon=True).start()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Drain and stop a server started with start()."""
        if not self.state.draining:
            self.drain()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def model_name_of(path) -> str:
    """The name /v1/models shows: the checkpoint folder's name (what clients pass as `model`)."""
    p = Path(str(path)).resolve()
    return p.parent.parent.name + "/" + p.name if p.parent.name == "checkpoints" else p.name
