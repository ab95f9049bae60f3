"""A real ComfyUI server for end-to-end tests: start, talk HTTP and websocket, stop.

Runs ``main.py`` of the ComfyUI checkout the test session found (tests/comfyui_env.py) as a
separate process, CPU only, bound to 127.0.0.1 on a free port, with a temporary
``--base-directory`` whose ``custom_nodes`` holds a symlink to this repository (how a
``git clone`` into ComfyUI/custom_nodes looks to ComfyUI). Nothing here imports ComfyUI.

    server = ComfyServer(comfyui, base_dir).start()
    with server.listen() as ws:              # websocket messages of this client
        prompt_id = server.queue(graph, ws.client_id)
        run = ws.wait_done(prompt_id)        # execution_success / _error / _interrupted
    server.stop()
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.comfyui_env import STUBBED

REPO = Path(__file__).resolve().parents[2]
PACK_DIR_NAME = "tlora-nodes"  # what `git clone` names the folder
HOST = "127.0.0.1"
DONE_TYPES = ("execution_success", "execution_error", "execution_interrupted")


def _importable(module: str) -> bool:
    """Judged in a clean interpreter: this process may already have a stub on its path."""
    probe = subprocess.run(
        [sys.executable, "-c", f"import {module}"], cwd="/", capture_output=True, check=False,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    return probe.returncode == 0


def server_pythonpath() -> list[str]:
    """PYTHONPATH entries the server process needs: the test-only stubs (tests/stubs/<name>:
    see STUBBED in tests/comfyui_env.py) where the real packages are missing or
    broken."""
    missing = [str(REPO / "tests" / "stubs" / name) for name in STUBBED if not _importable(name)]
    return [*missing, str(REPO / "tests" / "stubs" / "kit")] if missing else []


def _die_with_parent() -> None:
    """Linux: SIGTERM the server when the test process dies (even by SIGKILL), so no server
    outlives its tests."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    """The server could not start, died, or refused a request; the message has the log tail."""


class ComfyServer:
    def __init__(self, comfyui: Path, base_dir: Path, extra_pythonpath: list[str] | None = None, port: int | None = None):
        self.comfyui = Path(comfyui)
        self.base_dir = Path(base_dir)
        self.port = port or free_port()
        self.extra_pythonpath = list(extra_pythonpath or [])
        self.log_path = self.base_dir / "comfyui-server.log"
        self.process: subprocess.Popen | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def prepare_base_dir(self) -> None:
        for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        link = self.base_dir / "custom_nodes" / PACK_DIR_NAME
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)

    def command(self) -> list[str]:
        return [
            sys.executable, str(self.comfyui / "main.py"),
            "--cpu",
            "--listen", HOST,
            "--port", str(self.port),
            "--base-directory", str(self.base_dir),
            "--disable-api-nodes",
            "--database-url", "sqlite:///:memory:",
        ]

    def start(self, timeout: float = 180.0) -> ComfyServer:
        self.prepare_base_dir()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(self.extra_pythonpath + [p for p in [env.get("PYTHONPATH")] if p])
        env["CUDA_VISIBLE_DEVICES"] = ""
        # One CPU thread: on a small shared machine, OpenMP's second thread spins against the test
        # process and the browser (an SVD takes 3.8 s with two threads there, 0.07 s with one).
        threads = os.environ.get("TLORA_E2E_THREADS", "1")
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                self.command(), cwd=self.comfyui, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,  # its own process group: kill() takes all of it
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (only a prctl call, before exec)
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self.process.returncode} while starting.\n{self.log_tail()}")
            try:
                self.get_json("/object_info/KSampler", timeout=5)
                return
            except (OSError, ServerError):
                time.sleep(0.5)
        self.kill()
        raise ServerError(f"ComfyUI did not answer on {self.url} within {timeout:.0f}s.\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server's process group, SIGKILL what is left after ``timeout``."""
        if not self.alive():
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL, like a crash or a power cut: nothing in the server gets to clean up."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(30)

    def log_tail(self, chars: int = 6000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return text[-chars:]

    # -- HTTP --------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body=None, timeout: float = 30.0) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def get_json(self, path: str, timeout: float = 30.0):
        status, body = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise ServerError(f"GET {path} -> {status}: {body[:2000]!r}")
        return json.loads(body)

    def version(self) -> tuple[int, ...]:
        """The ComfyUI release this server runs (its comfyui_version.py)."""
        from tests.comfyui_env import comfyui_version

        return tuple(int(part) for part in comfyui_version(self.comfyui).split(".")[:3] if part.isdigit())

    def object_info(self, node_type: str | None = None) -> dict:
        return self.get_json("/object_info" + (f"/{urllib.parse.quote(node_type)}" if node_type else ""))

    def queue(self, graph: dict, client_id: str | None = None) -> str:
        """POST /prompt; returns the prompt id, or raises with the server's validation errors."""
        body = {"prompt": graph, "client_id": client_id or uuid.uuid4().hex}
        status, answer = self.request("POST", "/prompt", body)
        if status != 200:
            raise ServerError(f"POST /prompt -> {status}: {answer.decode(errors='replace')[:4000]}")
        return json.loads(answer)["prompt_id"]

    def history(self, prompt_id: str) -> dict:
        return self.get_json(f"/history/{prompt_id}").get(prompt_id, {})

    def interrupt(self) -> None:
        status, body = self.request("POST", "/interrupt", {})
        if status != 200:
            raise ServerError(f"POST /interrupt -> {status}: {body[:500]!r}")

    def listen(self) -> WebSocketListener:
        return WebSocketListener(self)

    def run(self, graph: dict, timeout: float = 300.0) -> Run:
        """Queue ``graph`` and wait for it to finish (success, error or interrupt)."""
        with self.listen() as ws:
            prompt_id = self.queue(graph, ws.client_id)
            return ws.wait_done(prompt_id, timeout)


@dataclass
class Run:
    """What one queued prompt did, as this client saw it over the websocket."""

    prompt_id: str
    status: str  # "execution_success", "execution_error" or "execution_interrupted"
    messages: list[dict] = field(default_factory=list)
    history: dict = field(default_factory=dict)

    def of_type(self, kind: str) -> list[dict]:
        return [m["data"] for m in self.messages if m["type"] == kind]

    @property
    def succeeded(self) -> bool:
        return self.status == "execution_success"

    @property
    def error(self) -> dict | None:
        errors = self.of_type("execution_error")
        return errors[0] if errors else None

    def executed_nodes(self) -> set[str]:
        return {str(m["node"]) for m in self.of_type("executing") if m.get("node") is not None}

    def cached_nodes(self) -> set[str]:
        return {str(n) for m in self.of_type("execution_cached") for n in m.get("nodes", [])}

    def outputs(self, node_id: str) -> dict:
        return self.history.get("outputs", {}).get(node_id, {})

    def describe(self) -> str:
        if self.error:
            e = self.error
            return f"{self.status}: {e.get('node_type')} #{e.get('node_id')}: {e.get('exception_message')}\n{''.join(e.get('traceback', []))[-3000:]}"
        return self.status


class WebSocketListener:
    """Collects every JSON message the server sends to one client id, on a background thread."""

    def __init__(self, server: ComfyServer):
        import websocket  # websocket-client, a test requirement

        self.server = server
        self.client_id = uuid.uuid4().hex
        self.messages: list[dict] = []
        self._cond = threading.Condition()
        self._closed = False
        self._ws = websocket.create_connection(f"ws://{HOST}:{server.port}/ws?clientId={self.client_id}", timeout=30)
        self._ws.settimeout(0.5)
        self._thread = threading.Thread(target=self._read, name="comfy-ws", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        import websocket

        while not self._closed:
            try:
                frame = self._ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketException, OSError):
                break
            if not isinstance(frame, str) or not frame:  # binary frames are previews; "" is the close frame
                continue
            message = json.loads(frame)
            message["received"] = time.monotonic()
            with self._cond:
                self.messages.append(message)
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __enter__(self) -> WebSocketListener:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        import websocket

        try:
            self._ws.close()
        except (websocket.WebSocketException, OSError):  # the server already dropped it
            pass
        self._thread.join(5)

    def wait_for(self, predicate, timeout: float = 120.0, what: str = "a message") -> dict:
        """The first message (oldest first) for which ``predicate(message)`` is true."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for message in self.messages:
                    if predicate(message):
                        return message
                left = deadline - time.monotonic()
                if left <= 0 or (self._closed and not self.server.alive()):
                    raise ServerError(f"no {what} within {timeout:.0f}s.\n{self.server.log_tail()}")
                self._cond.wait(min(left, 1.0))

    def wait_done(self, prompt_id: str, timeout: float = 300.0) -> Run:
        done = self.wait_for(
            lambda m: m.get("type") in DONE_TYPES and m.get("data", {}).get("prompt_id") == prompt_id,
            timeout, what=f"end of prompt {prompt_id}",
        )
        with self._cond:
            mine = [m for m in self.messages if _prompt_of(m) in (prompt_id, None)]
        history: dict = {}
        deadline = time.monotonic() + 10
        while not history and time.monotonic() < deadline:  # history is written right after the message
            history = self.server.history(prompt_id)
            if not history:
                time.sleep(0.1)
        return Run(prompt_id, done["type"], mine, history)


def _prompt_of(message: dict) -> str | None:
    data = message.get("data")
    return data.get("prompt_id") if isinstance(data, dict) else None
