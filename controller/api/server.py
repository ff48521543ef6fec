"""``HttpServer``: uvicorn serving the HTTP API on a thread of the controller process."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from edgefleet.controller.errors import ControllerStateError

__all__ = ["HttpServer"]

logger = logging.getLogger(__name__)

# Seconds uvicorn waits for open requests (an events long poll, say) when stopping.
_GRACEFUL_SHUTDOWN_S = 2.0
_START_TIMEOUT_S = 10.0


class HttpServer:
    """Serves an ASGI app with uvicorn on a daemon thread.

    ``start`` binds the socket itself, so a port in use raises ``OSError`` in the caller
    and ``port=0`` returns the port picked.
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise ControllerStateError("the HTTP server is not started")
        return int(self._socket.getsockname()[1])

    def start(self) -> int:
        """Bind, start serving and return the bound port.

        Raises ``OSError`` when the address cannot be bound, and ``ControllerStateError``
        when uvicorn did not start within 10 s.
        """
        if self._thread is not None:
            raise ControllerStateError("the HTTP server is already running")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit this. Without it, each response waited about 40 ms
        # for the client's delayed ACK (Nagle's algorithm) when uvicorn serves a socket
        # it did not bind itself (measured with uvicorn 0.55 on Linux).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError:
            sock.close()
            raise
        sock.listen(128)
        self._socket = sock

        config = uvicorn.Config(
            self._app,
            log_config=None,  # keep the process's logging setup (text or JSON)
            access_log=False,
            timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="http-api", daemon=True)
        self._thread.start()
        if not self._wait_started(_START_TIMEOUT_S):
            self.stop()
            raise ControllerStateError(
                f"the HTTP server on {self._host}:{self.port} did not start within "
                f"{_START_TIMEOUT_S:g} s"
            )
        logger.info("HTTP API listening on http://%s:%d/api/v1", self._host, self.port)
        return self.port

    def _run(self) -> None:
        assert self._server is not None and self._socket is not None
        # uvicorn installs signal handlers only on the main thread, so on this one the
        # controller's own SIGTERM handling stays in charge.
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def _wait_started(self, timeout_s: float) -> bool:
        assert self._server is not None and self._thread is not None
        deadline = time.monotonic() + timeout_s
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return self._server.started

    def stop(self) -> None:
        """Stop serving; open requests get up to 2 s to finish. Safe to call twice."""
        if self._server is None or self._thread is None:
            return
        # An app with ``state.stopping`` (``create_app``'s) ends its long polls on it, so
        # they return before uvicorn's grace period instead of being cancelled with an error.
        stopping = getattr(getattr(self._app, "state", None), "stopping", None)
        if stopping is not None:
            stopping.set()
        self._server.should_exit = True
        self._thread.join(timeout=_GRACEFUL_SHUTDOWN_S + 3)
        if self._thread.is_alive():
            logger.warning("the HTTP server thread did not stop; abandoning it")
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._server = None
        self._thread = None
        logger.info("HTTP API stopped")
