"""A headless Chromium driven over the DevTools protocol, logged in to the Airflow UI.

Uses Debian's `chromium` (nothing downloads a browser) and the `websockets`
package that Airflow installs. The simple auth manager reads the login from
the `_token` cookie that holds the JWT of ``POST /auth/token``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

import websockets


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def api_token(base_url: str, username: str, password: str) -> str:
    req = urllib.request.Request(f"{base_url}/auth/token",
                                 data=json.dumps({"username": username, "password": password}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    return json.loads(urllib.request.urlopen(req, timeout=30).read())["access_token"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """One page of a headless Chromium; every call is synchronous for the test's sake."""

    def __init__(self, width: int = 1400, height: int = 1600):
        self.port = _free_port()
        self.profile = tempfile.mkdtemp(prefix="datacomp-chromium-")
        self.proc = subprocess.Popen(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", f"--user-data-dir={self.profile}",
             f"--remote-debugging-port={self.port}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.loop = asyncio.new_event_loop()
        self.ws = self.loop.run_until_complete(self._connect())
        self.n = 0
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)

    async def _connect(self):
        deadline = time.monotonic() + 30
        while True:
            try:
                targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json", timeout=2).read())
                url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
                return await websockets.connect(url, max_size=64_000_000)
            except (OSError, StopIteration):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)

    async def _call(self, method: str, params: dict) -> dict:
        self.n += 1
        await self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.recv())
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def call(self, method: str, **params) -> dict:
        return self.loop.run_until_complete(self._call(method, params))

    def login(self, base_url: str, token: str) -> None:
        self.call("Network.enable")
        self.call("Network.setCookie", name="_token", value=token, url=base_url)

    def goto(self, url: str) -> None:
        """Load `url` and wait until the new document is there (navigate returns before it is)."""
        self.call("Page.navigate", url="about:blank")
        self.wait_for("document.location.href === 'about:blank'", 10, "a blank page")
        self.call("Page.navigate", url=url)
        self.wait_for(f"document.location.href.startsWith({json.dumps(url)}) && document.readyState === 'complete'",
                      30, url)

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0, what: str = ""):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.3)
        raise TimeoutError(f"waited {timeout} s for {what or expression}")

    def click(self, element_js: str) -> None:
        """Click the element `element_js` evaluates to with the mouse, as a person would."""
        box = self.js(f"(() => {{ const e = {element_js}; e.scrollIntoView({{block: 'center'}}); "
                      f"const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
        # then away, so that no hover card stays open over the next page
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=0, y=0)

    def type_into(self, element_js: str, text: str) -> None:
        """Replace the value of the input `element_js` evaluates to as a person would: click, select all, type, Tab."""
        self.click(element_js)
        self.js(f"(() => {{ const e = {element_js}; e.focus(); e.select(); }})()")
        self.call("Input.insertText", text=text)
        for kind in ("keyDown", "keyUp"):  # leaving the field commits it (number inputs parse on blur)
            self.call("Input.dispatchKeyEvent", type=kind, key="Tab", code="Tab", windowsVirtualKeyCode=9)

    def screenshot(self, path: str) -> None:
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.ws.close())
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.loop.close()
            shutil.rmtree(self.profile, ignore_errors=True)
