"""The real ComfyUI frontend in headless Chromium (Debian's ``chromium`` package driven by the
Python ``playwright`` package; no browser download).

    with Frontend.open(server) as ui:
        ui.load_workflow(json)        # window.app.loadGraphData
        ui.page.screenshot(...)
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
VIEWPORT = {"width": 2400, "height": 1500}  # fitted workflows render with full detail (zoom > 0.6)


def chromium_path() -> str | None:
    """$CHROMIUM, else Debian's chromium (or chromium-browser / google-chrome) on PATH."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env if os.path.isfile(env) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def missing_browser() -> str | None:
    """Why a browser test can't run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python 'playwright' package is not installed (pip install -r requirements-test.txt)"
    if chromium_path() is None:
        return "no Chromium found (apt-get install -y chromium, or set CHROMIUM=/path/to/chrome)"
    return None


@dataclass
class Frontend:
    page: object
    console: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    @contextmanager
    def open(cls, server, viewport: dict | None = None):
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page(viewport=viewport or VIEWPORT)
                ui = cls(page)
                page.on("console", lambda m: ui.console.append((m.type, m.text)))
                page.on("pageerror", lambda e: ui.console.append(("pageerror", f"{e} {getattr(e, 'stack', '')}"[:1500])))
                page.goto(server.url, wait_until="domcontentloaded")
                page.wait_for_function(
                    "() => window.app?.graph && window.LiteGraph?.registered_node_types"
                    " && 'TLoRA_Train' in window.LiteGraph.registered_node_types",
                    timeout=180_000,
                )
                ui.settle()
                ui.close_dialogs()  # the first visit shows the templates browser
                page.evaluate(  # the minimap would cover part of every screenshot
                    "async () => { try { await app.extensionManager.setting.set('Comfy.Minimap.Visible', false); } catch (e) {} }"
                )
                yield ui
            finally:
                browser.close()

    def settle(self, seconds: float = 1.0) -> None:
        time.sleep(seconds)

    def visible_dialogs(self) -> list[str]:
        """Header + text of every dialog on screen, and of the error overlay with which newer
        frontends (1.49) report missing nodes or models instead of a dialog."""
        return self.page.evaluate(
            """() => [...document.querySelectorAll('.p-dialog, [role=dialog], [data-testid=error-overlay]')]
                 .filter(d => d.offsetParent !== null || d.getClientRects().length)
                 .map(d => d.innerText.trim().slice(0, 500))"""
        )

    def close_dialogs(self) -> None:
        for _ in range(3):
            if not self.visible_dialogs():
                return
            self.page.keyboard.press("Escape")
            self.page.evaluate("() => document.querySelector('[data-testid=error-overlay-dismiss]')?.click()")
            time.sleep(0.5)

    def console_mark(self) -> int:
        return len(self.console)

    def errors_since(self, mark: int) -> list[str]:
        return [f"{kind}: {text}" for kind, text in self.console[mark:] if kind in ("error", "pageerror")]

    def load_workflow(self, workflow: dict) -> None:
        self.page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
        self.settle(1.5)
