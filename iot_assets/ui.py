"""`iot-assets ui`: the Dagster webserver, the daemon and an http server for the reports, on localhost.

A browser does not follow `file://` links from a web page, so the report files are served over
http next to the UI: the code location links each report at IOT_ASSETS_REPORTS_URL (set here for
the webserver and the daemon, which load the code location). The three stop together: on SIGTERM
or SIGINT, or when one of them dies.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

HOST = "127.0.0.1"
STOP_SECONDS = 20  # what a child gets to stop after SIGTERM before it is killed


class UiError(RuntimeError):
    """The UI cannot start: a port is taken, a program is missing, a child died."""


def free_port() -> int:
    """A TCP port on localhost that is free now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a server could listen on localhost:`port` now (as servers do, reusing a port in TIME_WAIT)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


class _QuietReportHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 (the base class's name)
        pass  # a request log per report opened would drown the webserver's own


def serve_reports(folder: Path, port: int) -> ThreadingHTTPServer:
    """An http server for `folder` on localhost:`port`, running in a daemon thread."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        server = ThreadingHTTPServer((HOST, port), functools.partial(_QuietReportHandler, directory=str(folder)))
    except OSError as exc:
        raise UiError(f"cannot serve the reports on {HOST}:{port} ({exc.strerror}): "
                      f"choose another with --reports-port") from None
    threading.Thread(target=server.serve_forever, name="reports-http", daemon=True).start()
    return server


def _program(name: str) -> str:
    """A Dagster program of this Python environment (next to its interpreter), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    raise UiError(f"{name} is not installed next to {sys.executable}: install dagster-webserver")


@dataclass
class Ui:
    """The running UI: its children, its reports server and their addresses."""

    ui_url: str
    reports_url: str
    children: dict[str, subprocess.Popen]
    reports_server: ThreadingHTTPServer
    stopped: threading.Event = field(default_factory=threading.Event)

    def stop(self) -> None:
        """SIGTERM to every child's process group, SIGKILL to whatever is left after `STOP_SECONDS`."""
        if self.stopped.is_set():
            return
        self.stopped.set()
        for child in self.children.values():
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for child in self.children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)
                child.wait()
        self.reports_server.shutdown()
        self.reports_server.server_close()

    def dead_child(self) -> str | None:
        """The name of a child that has exited, if one has."""
        return next((name for name, child in self.children.items() if child.poll() is not None), None)


def _signal_group(child: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(child.pid, sig)
    except ProcessLookupError:
        pass


def start(env: dict[str, str], reports_folder: Path, ui_port: int, reports_port: int) -> Ui:
    """Start the reports server, the webserver and the daemon; `env` is the children's environment
    (DAGSTER_HOME and the IOT_ASSETS_* settings)."""
    reports_server = serve_reports(reports_folder, reports_port)
    reports_url = f"http://{HOST}:{reports_port}"
    env = {**env, "IOT_ASSETS_REPORTS_URL": reports_url}
    target = ["-m", "iot_assets.definitions"]
    commands = {
        "dagster-webserver": [_program("dagster-webserver"), *target, "-h", HOST, "-p", str(ui_port)],
        "dagster-daemon": [_program("dagster-daemon"), "run", *target],
    }
    children: dict[str, subprocess.Popen] = {}
    try:
        for name, command in commands.items():
            # Own process groups: a terminal's Ctrl-C reaches this process only, which stops them in order.
            children[name] = subprocess.Popen(command, env=env, start_new_session=True)
    except OSError as exc:
        ui = Ui(f"http://{HOST}:{ui_port}", reports_url, children, reports_server)
        ui.stop()
        raise UiError(f"cannot start {command[0]}: {exc}") from None
    return Ui(f"http://{HOST}:{ui_port}", reports_url, children, reports_server)


def serve(env: dict[str, str], reports_folder: Path, ui_port: int, reports_port: int,
          echo: Callable[[str], None]) -> int:
    """Run the UI until SIGTERM or SIGINT (exit 0) or until one of its processes dies (exit 1); stop all three."""
    if not port_is_free(ui_port):
        raise UiError(f"port {ui_port} on {HOST} is taken: choose another with --port")
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    ui = None
    try:
        ui = start(env, reports_folder, ui_port, reports_port)
        deadline = time.monotonic() + 180
        served = False
        while not received:
            dead = ui.dead_child()
            if dead:
                echo(f"{dead} exited with status {ui.children[dead].returncode}: stopping the UI")
                return 1
            if not served:
                served = _answers(f"{ui.ui_url}/server_info")
                if served:
                    echo(f"Dagster UI: {ui.ui_url}   reports: {ui.reports_url}/   (Ctrl-C stops all three)")
                elif time.monotonic() > deadline:
                    echo(f"the Dagster webserver did not answer on {ui.ui_url} within 180 s: stopping the UI")
                    return 1
            time.sleep(0.5)
        echo(f"{signal.Signals(received[0]).name}: stopping the webserver, the daemon and the reports server")
        return 0
    finally:
        if ui is not None:
            ui.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5)
        return True
    except OSError:
        return False
