"""Open a page in real headless Chromium (Debian's ``chromium``) and report what a person would see.

Driven over the DevTools protocol (a websocket, through aiohttp which the pipeline already depends on):
console messages (``Runtime.consoleAPICalled``), uncaught exceptions (``Runtime.exceptionThrown``) and
browser log entries (``Log.entryAdded``: blocked or failed network loads, Content-Security-Policy
violations) are collected while the page loads; then a script measures what was laid out and a
screenshot is taken. Chromium runs with the flags that keep it off the network (no background
networking, sync or component updates) and a throw-away profile.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--mute-audio", "--remote-debugging-port=0", "--window-size=1200,900"]


@dataclass
class PageReport:
    """What happened while a page loaded."""

    console: list[dict[str, Any]] = field(default_factory=list)  # {"level", "text"}
    exceptions: list[str] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)  # {"level", "source", "text"}
    evaluated: Any = None
    screenshot: bytes = b""

    @property
    def errors(self) -> list[str]:
        """Console errors/warnings, exceptions and error-level browser log entries, as text."""
        return ([f"console.{m['level']}: {m['text']}" for m in self.console if m["level"] in ("error", "warning",
                                                                                               "assert")]
                + [f"exception: {e}" for e in self.exceptions]
                + [f"{e['source']} {e['level']}: {e['text']}" for e in self.log if e["level"] in ("error", "warning")])


class _Session:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self.next_id = ws, 0
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.load = asyncio.Event()

    async def pump(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.append(data)
                if data["method"] == "Page.loadEventFired":
                    self.load.set()

    async def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
                   timeout: float = 20) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        await self.ws.send_str(json.dumps(msg))
        reply = await asyncio.wait_for(future, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return dict(reply.get("result", {}))


def _devtools_url(profile: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> str:
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode} before it listened")
        if port_file.exists():
            lines = port_file.read_text().split()
            if len(lines) >= 2:
                return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        time.sleep(0.05)
    raise RuntimeError("chromium did not open its DevTools port in time")


async def _drive(url: str, page: str, expression: str, settle_s: float) -> PageReport:
    report = PageReport()
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        s = _Session(ws)
        pump = asyncio.create_task(s.pump())
        try:
            target = (await s.call("Target.createTarget", {"url": "about:blank"}))["targetId"]
            sid = (await s.call("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
            for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
                await s.call(domain, session=sid)
            await s.call("Page.navigate", {"url": page}, session=sid)
            await asyncio.wait_for(s.load.wait(), 30)
            await asyncio.sleep(settle_s)  # late console output, deferred loads
            result = await s.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                                  session=sid)
            if "exceptionDetails" in result:
                raise RuntimeError(f"evaluation failed: {result['exceptionDetails']}")
            report.evaluated = result["result"].get("value")
            size = (await s.call("Page.getLayoutMetrics", session=sid))["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
            shot = await s.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                           "clip": clip}, session=sid)
            report.screenshot = base64.b64decode(shot["data"])
        finally:
            pump.cancel()
    for event in s.events:
        params = event.get("params", {})
        if event["method"] == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            report.console.append({"level": params.get("type"), "text": text})
        elif event["method"] == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            report.exceptions.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif event["method"] == "Log.entryAdded":
            entry = params.get("entry", {})
            report.log.append({"level": entry.get("level"), "source": entry.get("source"),
                               "text": entry.get("text", "")})
    return report


def open_page(page: str, expression: str = "document.title", settle_s: float = 0.5,
              timeout: float = 60) -> PageReport:
    """Load ``page`` (a file:// or http://127.0.0.1 URL) and evaluate ``expression`` in it."""
    if CHROMIUM is None:
        raise RuntimeError("chromium is not installed (Debian: apt-get install chromium)")
    # Chromium's helper processes may still write into the profile while it is removed: a leftover
    # temporary folder is not a test failure.
    with tempfile.TemporaryDirectory(prefix="imtel-chromium-", ignore_cleanup_errors=True) as tmp:
        profile = Path(tmp)
        proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            url = _devtools_url(profile, proc)
            return asyncio.run(asyncio.wait_for(_drive(url, page, expression, settle_s), timeout))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # the browser and its helpers (own session)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


# What the report tests measure in the page: every chart's size and marks, the tables, the title.
MEASURE_REPORT = """JSON.stringify({
  title: document.title,
  charts: [...document.querySelectorAll('svg[data-chart]')].map(s => {
    const box = s.getBoundingClientRect();
    return {name: s.dataset.chart, width: box.width, height: box.height,
            lines: s.querySelectorAll('path.series').length, bars: s.querySelectorAll('rect.bar').length,
            noData: s.querySelectorAll('.no-data').length};
  }),
  tables: [...document.querySelectorAll('[data-table]')].map(t => ({name: t.dataset.table, tag: t.tagName,
           rows: t.querySelectorAll('tbody tr').length})),
  scripts: document.scripts.length,
  text: document.body.innerText.slice(0, 20000)
})"""
