"""Screenshot of the MLflow UI comparing variant runs (parallel coordinates, runs, differing params) for the README.

    .venv/bin/python -m scripts.mlflow_screenshot [--store sqlite:///$PWD/mlflow.db] [--out reports/mlflow_compare.png]
                                                   [--runs model01-seed0 model02-seed0 ...]

One-time prerequisite: Chromium (Debian/Ubuntu: `apt-get install chromium`). The browser is driven over the
Chrome DevTools protocol with aiohttp (installed with dvc), so nothing else is needed. The store is only read:
a sqlite store is copied with SQLite's backup API and `mlflow server` is pointed at the copy.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import shutil
import sqlite3
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

import aiohttp
from mlflow.tracking import MlflowClient

from scripts.mlflow_server import mlflow_server, stop_process_group

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = [f"model0{i}{kind}-seed0" for kind in ("", "_linear") for i in range(1, 5)]
PLOT_PARAMS = ["variant.name", "variant.latent_activation"]
TEST_METRICS = ["test_mse", "test_psnr", "test_ssim"]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, mlflow_server(snapshot(args.store, Path(tmp))) as url:
        experiment_id, runs = pick_runs(MlflowClient(url), args.experiment, args.runs)
        metrics = TEST_METRICS if all("test_mse" in r.data.metrics for r in runs) else ["val_loss"]
        print(f"comparing {', '.join(r.info.run_name for r in runs)} on {', '.join(metrics)}")
        page = compare_url(url, experiment_id, [r.info.run_id for r in runs])
        png = asyncio.run(screenshot(args.chromium, page, metrics, args.width, Path(tmp) / "profile"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(f"wrote {args.out}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.mlflow_screenshot", description=__doc__.split("\n")[0])
    parser.add_argument("--store", default=f"sqlite:///{REPO / 'mlflow.db'}", help="tracking store URI (read only)")
    parser.add_argument("--experiment", default="compressnet")
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="run names to compare (missing ones skipped)")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "mlflow_compare.png")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--width", type=int, default=1800)
    args = parser.parse_args(argv)
    if not shutil.which(args.chromium):  # before the server starts, not as a traceback after it
        parser.error(f"no Chromium at {args.chromium!r}: apt-get install chromium, or --chromium PATH")
    return args


def snapshot(store: str, directory: Path) -> str:
    """A private copy of a sqlite store (consistent even while a pipeline writes to it); other URIs unchanged."""
    if not store.startswith("sqlite:///"):
        return store
    source = Path(store[len("sqlite:///") :])
    if not source.is_file():
        raise SystemExit(f"no MLflow store at {source}")
    copy = directory / "mlflow.db"
    with sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    return f"sqlite:///{copy}"


def pick_runs(client: MlflowClient, experiment: str, names: list[str]) -> tuple[str, list]:
    """The named FINISHED runs, the latest of each name, in the given order; only the evaluated ones (test_* metrics)
    if two or more are."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"no experiment {experiment!r} in the store")
    newest_first = client.search_runs(
        [found.experiment_id], "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"]
    )
    runs = {}
    for run in newest_first:  # a retrained run's name comes again, older
        runs.setdefault(run.info.run_name, run)
    chosen = [runs[name] for name in names if name in runs]
    evaluated = [r for r in chosen if "test_mse" in r.data.metrics]
    picked = evaluated if len(evaluated) >= 2 else chosen
    if len(picked) < 2:
        raise SystemExit(f"need at least two finished runs among {names}, found {[r.info.run_name for r in chosen]}")
    return found.experiment_id, picked


def compare_url(server: str, experiment_id: str, run_ids: list[str]) -> str:
    """The UI's compare-runs route (see getCompareRunPageRoute in the UI bundle)."""
    query = urllib.parse.urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps([experiment_id])})
    return f"{server}/#/compare-runs?{query}"


async def screenshot(chromium: str, page: str, metrics: list[str], width: int, profile: Path) -> bytes:
    """The compare view without the assistant panel: chosen params/metrics plotted, differing params listed."""
    async with Chromium(chromium, profile, width) as browser:
        await browser.send("Page.navigate", url=page)
        await browser.wait_for("document.querySelector('[data-testid=clear-button]')")
        await browser.click("[data-component-id='mlflow.assistant.chat_panel.close']", required=False)
        await browser.click("[aria-label='Parameters - Show diff only']")
        await browser.click("[data-testid=clear-button]")
        await browser.choose("Parameters:", PLOT_PARAMS)
        await browser.choose("Metrics:", metrics)
        await browser.mouse_click(width - 5, 5)  # an empty corner: unfocus the select box
        await asyncio.sleep(2)  # let the plot redraw
        return await browser.capture_above("Metrics")  # a virtualised grid that shows 6 of ~50 rows


class Chromium:
    """Headless Chromium driven through the DevTools protocol (one page)."""

    def __init__(self, executable: str, profile: Path, width: int):
        self.cmd = [
            executable,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            f"--window-size={width},1200",
            "about:blank",
        ]
        self.profile, self.width, self.ids = profile, width, itertools.count(1)

    async def __aenter__(self) -> Chromium:
        self.process = subprocess.Popen(
            self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self.http = aiohttp.ClientSession()
        try:
            port = await self._devtools_port()
            async with self.http.get(f"http://127.0.0.1:{port}/json") as response:
                target = next(t for t in await response.json() if t["type"] == "page")
            self.ws = await self.http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self.http.close()
        stop_process_group(self.process)

    async def _devtools_port(self, timeout: float = 30) -> str:
        port_file = self.profile / "DevToolsActivePort"
        for _ in range(int(timeout / 0.2)):
            if port_file.exists() and port_file.read_text().strip():
                return port_file.read_text().split()[0]
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{self.cmd[0]} did not open its DevTools port")

    async def send(self, method: str, **params) -> dict:
        message_id = next(self.ids)
        await self.ws.send_json({"id": message_id, "method": method, "params": params})
        while (reply := await self.ws.receive_json()).get("id") != message_id:
            pass  # events
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    async def js(self, expression: str):
        reply = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return reply["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 60) -> None:
        for _ in range(int(timeout / 0.5)):
            if await self.js(f"!!({expression})"):
                return
            await asyncio.sleep(0.5)
        raise TimeoutError(f"the page never showed {expression}")

    async def click(self, selector: str, required: bool = True) -> None:
        found = await self.js(f"(e => {{ e?.click(); return !!e; }})(document.querySelector({json.dumps(selector)}))")
        if required and not found:
            raise RuntimeError(f"nothing on the page matches {selector}")
        await asyncio.sleep(0.3)

    async def choose(self, label: str, options: list[str]) -> None:
        """Pick options in the select box after the text `label`: click it, type the option, press Enter."""
        centre = (
            f"(() => {{ const label = [...document.querySelectorAll('div')].find(d => d.textContent === "
            f"{json.dumps(label)}); const r = label.nextElementSibling.getBoundingClientRect(); "
            f"return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        )
        for option in options:
            await self.mouse_click(*await self.js(centre))
            await self.send("Input.insertText", text=option)
            await asyncio.sleep(0.3)
            await self.key("Enter", 13)
        await self.key("Escape", 27)

    async def mouse_click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def key(self, name: str, code: int) -> None:
        for kind in ("keyDown", "keyUp"):
            await self.send("Input.dispatchKeyEvent", type=kind, key=name, code=name, windowsVirtualKeyCode=code)
        await asyncio.sleep(0.3)

    async def capture_above(self, section: str) -> bytes:
        """The page down to the collapsible `section`, tables at full length (the UI caps them at 500 px)."""
        await self.send(
            "Emulation.setDeviceMetricsOverride", width=self.width, height=6000, deviceScaleFactor=1, mobile=False
        )
        await self.js(
            "document.querySelectorAll('table.mlflow-compare-table').forEach(t => t.style.maxHeight = 'none')"
        )
        await asyncio.sleep(1)
        bottom = await self.js(
            f"[...document.querySelectorAll('div')].find(d => d.textContent === {json.dumps(section)})"
            ".closest('.du-bois-light-collapse-item').getBoundingClientRect().top"
        )
        shot = await self.send(
            "Page.captureScreenshot",
            format="png",
            clip={"x": 0, "y": 0, "width": self.width, "height": bottom, "scale": 1},
        )
        return base64.b64decode(shot["data"])


if __name__ == "__main__":
    main()
