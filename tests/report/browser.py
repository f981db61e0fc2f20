"""Open a ``report.html`` in a real headless Chromium and report what a reader would see.

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe``
(null-terminated JSON on file descriptors 3 and 4), which needs nothing but the standard
library: no Selenium, no chromedriver, no websocket client. Mouse moves and clicks are real
input events dispatched to the page (``Input.dispatchMouseEvent``), so Plotly's own hover
and click handling is what is exercised.

:func:`check_report_in_browser` is the one entry point; the tests (``tests/report``, and the
study's) assert on the dict it returns. :func:`find_chromium` says whether a browser is
there; :func:`require_chromium` skips a test without one unless ``TL_LVLM_REQUIRE_BROWSER=1``
(CI), where it fails.
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

#: Flags of a headless run on a CI machine (no sandbox in containers, no GPU, no network).
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
)
VIEWPORT = (1280, 900)


def find_chromium() -> str | None:
    """Path of a Chromium (or Chrome) executable, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def require_chromium() -> str:
    """The Chromium executable; skips the calling test without one, or fails it when
    ``TL_LVLM_REQUIRE_BROWSER=1`` (set by ``.ci/run``)."""
    import pytest

    path = find_chromium()
    if path is None:
        reason = (
            "no chromium on PATH: the report's browser test needs it (Debian/Ubuntu: "
            "apt-get install chromium; .ci/run installs it)"
        )
        if os.environ.get("TL_LVLM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"TL_LVLM_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    return path


class BrowserError(RuntimeError):
    """Chromium did not start, answer or render in time."""


class _DevTools:
    """A Chromium process and its DevTools pipe."""

    def __init__(self, executable: str, timeout: float) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="tl-lvlm-chromium-")
        # Pipe ends numbered above 4, so that the dup2 onto 3 and 4 cannot clobber them.
        to_child_r, self.to_child = (_high_fd(fd) for fd in os.pipe())
        self.from_child, from_child_w = (_high_fd(fd) for fd in os.pipe())
        self.log_path = Path(self.profile) / "chromium.log"
        argv = [
            executable,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={self.profile}",
            f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
            "about:blank",
        ]
        actions = [
            (os.POSIX_SPAWN_DUP2, to_child_r, 3),
            (os.POSIX_SPAWN_DUP2, from_child_w, 4),
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(self.log_path), os.O_WRONLY | os.O_CREAT, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        # Its own process group, so that closing it ends the renderer and GPU children too.
        self.pid = os.posix_spawn(executable, argv, dict(os.environ), file_actions=actions,
                                  setpgroup=0)  # fmt: skip
        os.close(to_child_r)
        os.close(from_child_w)
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    # ------------------------------------------------------------ protocol
    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and wait for its answer; events that arrive meanwhile are kept."""
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self.to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float | None = None) -> dict:
        """The first event ``method`` (already received or arriving within ``timeout``)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(self._read(deadline))

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.from_child], [], [], max(left, 0))
            if not ready:
                raise BrowserError(f"chromium did not answer in {self.timeout:g} s{self._log()}")
            chunk = os.read(self.from_child, 1 << 20)
            if not chunk:
                raise BrowserError(f"chromium closed the DevTools pipe{self._log()}")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def _log(self) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        except OSError:
            return ""
        return (": " + " | ".join(tail)) if tail else ""

    def close(self) -> None:
        try:
            os.write(self.to_child, json.dumps({"id": -1, "method": "Browser.close"}).encode()
                     + b"\0")  # fmt: skip
        except OSError:
            pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if os.waitpid(self.pid, os.WNOHANG) != (0, 0):
                break
            time.sleep(0.05)
        else:
            os.killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.to_child)
        os.close(self.from_child)
        shutil.rmtree(self.profile, ignore_errors=True)


def _high_fd(fd: int) -> int:
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


# Page-side helpers, evaluated in the report (they read Plotly's own state of each figure).
_FIGURES_JS = """(() => {
  const divs = Array.from(document.querySelectorAll('.plotly-graph-div'));
  return divs.map(d => ({
    id: d.id,
    rendered: !!d.querySelector('.main-svg') && !!d._fullLayout,
    traces: (d.data || []).map(t => t.type),
    title: d._fullLayout ? (d._fullLayout.title.text || '') : '',
    subtitle: d._fullLayout && d._fullLayout.title.subtitle
      ? (d._fullLayout.title.subtitle.text || '') : '',
  }));
})()"""

# Centre of heatmap cell (layer, head) in viewport coordinates, after scrolling it into view.
_CELL_JS = """((id, layer, head) => {
  const gd = document.getElementById(id);
  gd.scrollIntoView({block: 'center'});
  const fl = gd._fullLayout, box = gd.getBoundingClientRect();
  const z = gd._fullData[0].z;
  return {x: box.left + fl._size.l + fl.xaxis.l2p(head),
          y: box.top + fl._size.t + fl.yaxis.l2p(layer),
          n_layers: z.length, n_heads: z[0].length};
})"""

_HOVER_JS = """(() => {
  const label = document.querySelector('.hoverlayer .hovertext');
  if (!label) return null;
  const lines = Array.from(label.querySelectorAll('tspan.line'));
  return lines.length ? lines.map(t => t.textContent).join('\\n') : label.textContent;
})()"""

_CHART_JS = """(id => {
  const gd = document.getElementById(id);
  return {y: Array.from(gd._fullData[0].y), title: gd._fullLayout.title.text};
})"""


def check_report_in_browser(
    path: str | os.PathLike,
    *,
    cells: dict[str, tuple[int, int]] | None = None,
    screenshot: str | os.PathLike | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Load ``path`` from ``file://`` in headless Chromium, hover and click each head heatmap.

    Args:
        path: the report.
        cells: heatmap div id -> ``(layer, head)`` to hover and click; default the middle
            cell of each heatmap (``(n_layers // 2, n_heads // 2)``, read from the figure).
        screenshot: also write the full-page PNG there.
        timeout: seconds any one step may take.

    Returns:
        ``{"console_errors": [str], "figures": [{"id", "rendered", "traces", "title",
        "subtitle"}], "heatmaps": [{"id", "cell": (layer, head), "hover": str | None,
        "chart_before": {"y", "title"}, "chart_after": {"y", "title"}}], "screenshot":
        {"png": bytes, "size": (w, h), "n_colours": int, "non_white": float},
        "html_images": number of HTML <img> elements, "document_title": str}``. A heatmap's
        chart is the per-sample figure that follows it in the page.
    """
    import numpy as np
    from PIL import Image

    url = Path(path).resolve().as_uri()
    devtools = _DevTools(require_executable(), timeout)
    try:
        target = devtools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = devtools.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]

        def send(method: str, **params) -> dict:
            return devtools.send(method, params, session)

        def evaluate(expression: str) -> Any:
            result = send("Runtime.evaluate", expression=expression, returnByValue=True)
            if "exceptionDetails" in result:
                raise BrowserError(f"page script failed: {result['exceptionDetails']}")
            return result["result"].get("value")

        for domain in ("Page", "Runtime", "Log"):
            send(f"{domain}.enable")
        send(
            "Emulation.setDeviceMetricsOverride",
            width=VIEWPORT[0],
            height=VIEWPORT[1],
            deviceScaleFactor=1,
            mobile=False,
        )
        send("Page.navigate", url=url)
        devtools.wait_event("Page.loadEventFired")
        figures = _wait_rendered(evaluate, timeout)
        heatmaps = []
        ids = [f["id"] for f in figures]
        for i, figure in enumerate(figures):
            if not figure["id"].startswith("heatmap-"):
                continue
            chart_id = ids[i + 1]
            cell = (cells or {}).get(figure["id"])
            probe = evaluate(f"{_CELL_JS}({json.dumps(figure['id'])}, 0, 0)")
            if cell is None:
                cell = (probe["n_layers"] // 2, probe["n_heads"] // 2)
            at = evaluate(f"{_CELL_JS}({json.dumps(figure['id'])}, {cell[0]}, {cell[1]})")
            before = evaluate(f"{_CHART_JS}({json.dumps(chart_id)})")
            send("Input.dispatchMouseEvent", type="mouseMoved", x=at["x"], y=at["y"])
            hover = _poll(lambda: evaluate(_HOVER_JS), timeout=5)
            for kind in ("mousePressed", "mouseReleased"):
                send(
                    "Input.dispatchMouseEvent",
                    type=kind,
                    x=at["x"],
                    y=at["y"],
                    button="left",
                    clickCount=1,
                )
            after = _poll_change(evaluate, f"{_CHART_JS}({json.dumps(chart_id)})", before)
            heatmaps.append(
                {
                    "id": figure["id"],
                    "chart": chart_id,
                    "cell": tuple(cell),
                    "hover": hover or None,
                    "chart_before": before,
                    "chart_after": after,
                }
            )
        send("Input.dispatchMouseEvent", type="mouseMoved", x=0, y=0)
        # The report draws in SVG and embeds PNGs as data URIs inside it: an HTML <img>
        # element could only come from markup that escaped the escaping.
        html_images = evaluate("document.querySelectorAll('img').length")
        title = evaluate("document.title")
        png = _screenshot(send, evaluate)
        errors = _console_errors(devtools.events)
    finally:
        devtools.close()
    image = Image.open(io.BytesIO(png)).convert("RGB")
    rgb = np.asarray(image, dtype=np.uint32).reshape(-1, 3)
    packed = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    n_colours = len(np.unique(packed))
    non_white = float((packed != 0xFFFFFF).mean())
    if screenshot is not None:
        Path(screenshot).write_bytes(png)
    return {
        "console_errors": errors,
        "figures": figures,
        "heatmaps": heatmaps,
        "html_images": html_images,
        "document_title": title,
        "screenshot": {
            "png": png,
            "size": image.size,
            "n_colours": n_colours,
            "non_white": non_white,
        },
    }


def require_executable() -> str:
    path = find_chromium()
    if path is None:
        raise BrowserError("no chromium on PATH (apt-get install chromium)")
    return path


def _wait_rendered(evaluate, timeout: float) -> list[dict]:
    """The figures once every Plotly div has drawn (or the state at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        figures = evaluate(_FIGURES_JS)
        if (figures and all(f["rendered"] for f in figures)) or time.monotonic() > deadline:
            return figures
        time.sleep(0.1)


def _poll(fn, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def _poll_change(evaluate, expression: str, before: Any, timeout: float = 5) -> Any:
    """The value of ``expression`` once it differs from ``before`` (``before`` at the
    timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = evaluate(expression)
        if value != before or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def _screenshot(send, evaluate) -> bytes:
    """PNG of the whole page (at most 12,000 px tall)."""
    evaluate("window.scrollTo(0, 0)")
    height = min(12_000, int(evaluate("document.documentElement.scrollHeight")))
    shot = send(
        "Page.captureScreenshot",
        format="png",
        captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": VIEWPORT[0], "height": height, "scale": 1},
    )
    return base64.b64decode(shot["data"])


def _console_errors(events: list[dict]) -> list[str]:
    """Uncaught exceptions, ``console.error`` calls and error log entries (failed loads,
    blocked resources), one line each."""
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            description = details.get("exception", {}).get("description") or details.get("text")
            errors.append(f"exception: {description}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            errors.append(f"console.{params['type']}: {args}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(
                f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}"
            )
    return errors
