"""Take the README's screenshot of the dashboard's device page during ``edgefleet demo``.

Runs the demo of ``edgefleet demo --http-port PORT`` and waits until the policy has
stepped the squeezed device down and its latency is back within budget. Then it photographs that
device's page in headless Chromium (Debian's ``/usr/bin/chromium``), so the charts show
real telemetry: the p95 breach, the step-down marker and the recovery.

    .venv/bin/python docs/screenshot_device_page.py --out docs/device-page.png
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import sync_playwright

DEVICE = "demo-sensor-1"
STEP_DOWN_KINDS = "stepped_down,recompressed"
# A laptop screen: the page is laid out for this width.
VIEWPORT = {"width": 1366, "height": 900}
CHROMIUM = "/usr/bin/chromium"
# The demo prints this once the squeezed device is back under budget.
RECOVERED_LINE = "stopped the CPU hogs"
# The demo prints the dashboard URL with an operator token in its fragment.
DASHBOARD_LINE = re.compile(r"dashboard: (http://\S+/#token=(\S+))")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str, *, token: str | None = None) -> dict | None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=5
        ) as response:
            return json.load(response)
    except (OSError, urllib.error.URLError, ValueError):
        return None


def wait_for(
    condition: Callable[[], object],
    *,
    timeout_s: float,
    what: str,
    demo: subprocess.Popen,
    interval_s: float = 1.0,
) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if demo.poll() is not None:
            raise SystemExit(f"the demo exited with code {demo.returncode} before {what}")
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise SystemExit(f"timed out after {timeout_s:.0f} s waiting for {what}")


def stop_demo(demo: subprocess.Popen) -> None:
    """Interrupt the demo so it stops its processes; end its whole session if it hangs."""
    demo.send_signal(signal.SIGINT)
    try:
        demo.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(demo.pid, signal.SIGTERM)


def photograph(page, out: Path) -> None:
    """Reload the device page and save everything from the header to the end of the charts."""
    page.reload()
    page.locator("#chart-latency path.series").wait_for(timeout=20_000)
    page.locator("#chart-latency .event-marker").first.wait_for(timeout=20_000)
    charts = page.locator("#charts").bounding_box()
    if charts is None:
        raise SystemExit("the device page drew no charts")
    height = int(charts["y"] + charts["height"] + 16)
    page.screenshot(
        path=str(out),
        full_page=True,
        clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": height},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/device-page.png"))
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="Folder for the demo's files; a new temporary folder by default. A folder "
        "with demo/controller/compress-cache from an earlier run skips the compression.",
    )
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgefleet-screenshot-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "demo.log"
    # The demo with longer phase timeouts than `edgefleet demo`, because a screenshot taken
    # on a busy machine is as good as one taken on an idle one.
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from edgefleet.demo.runner import run_demo\n"
        "from edgefleet.demo.scenario import DemoTimeouts\n"
        "timeouts = DemoTimeouts(deploy_s=1200, step_down_s=300, recovery_s=120)\n"
        f"sys.exit(run_demo(workdir=Path({str(workdir / 'demo')!r}), json_output=False, "
        f"timeouts=timeouts, http_port={port}))\n"
    )
    with log_path.open("wb") as log:
        # A session of its own, so that a failure here can stop the demo's agents too.
        demo = subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for(
                lambda: get_json(f"{url}/api/v1/health"),
                timeout_s=300,
                what="the controller's HTTP API",
                demo=demo,
            )
            dashboard = wait_for(
                lambda: DASHBOARD_LINE.search(log_path.read_text(errors="replace")),
                timeout_s=60,
                what="the dashboard URL",
                demo=demo,
            )
            token = dashboard.group(2)
            print(f"dashboard at {url}/; waiting for {DEVICE} to step down", flush=True)  # noqa: T201
            # The browser is open before the step-down: the demo stops its fleet a few
            # seconds after the device recovers, so the picture must be quick.
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
                page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
                page.goto(dashboard.group(1))
                page.goto(f"{url}/#/devices/{DEVICE}")
                events_url = f"{url}/api/v1/events?device_id={DEVICE}&kind={STEP_DOWN_KINDS}"
                wait_for(
                    lambda: (get_json(events_url, token=token) or {}).get("events"),
                    # Compressing for three profiles comes first: minutes on a busy host.
                    timeout_s=1800,
                    what=f"a step-down of {DEVICE}",
                    demo=demo,
                )
                # The demo stops the CPU hogs once the device served three samples under
                # budget on its new variant, and ends a few seconds later.
                wait_for(
                    lambda: RECOVERED_LINE in log_path.read_text(errors="replace"),
                    timeout_s=180,
                    what=f"{DEVICE} back within budget",
                    demo=demo,
                    interval_s=0.2,
                )
                photograph(page, args.out)
                browser.close()
            print(f"wrote {args.out}", flush=True)  # noqa: T201
        except BaseException:
            stop_demo(demo)
            raise
        finally:
            code = demo.wait(timeout=600)
    print(f"the demo ended with code {code}; its log is {log_path}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
