"""The web dashboard in headless Chromium against a real fleet.

A controller serves the HTTP API and the dashboard on loopback. Two agent processes serve
the planned variant and report real telemetry while a thread sends them digits. The
tests load each page, compare what the charts draw with the API's data, and click the
actions and check their result through the API.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from http_fleet_support import HttpFleet, get_json, start_http_fleet, wait_until

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
INSTALL_HINT = (
    "the dashboard tests need Debian's chromium at /usr/bin/chromium; install it with "
    "`make chromium` or `apt-get install chromium`"
)
# Device ids and their p95 budgets. The planner predicts about 0.01 ms for the MLP, so
# both profiles get a ladder, but the agent serves it in about 0.15 ms: the second device
# is over its budget and the first within it.
DEVICES = {"cam-1": 50.0, "cam-2": 0.05}
# Maximum wait for the page to show what the API already has (refreshes run every 5 s).
PAGE_TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpFleet]:
    fleet = start_http_fleet(tmp_path_factory.mktemp("dashboard"), devices=DEVICES)
    yield fleet
    fleet.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(INSTALL_HINT)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page_errors() -> list[str]:
    """Script errors and console errors the page logged; a test may remove expected ones."""
    return []


@contextmanager
def open_context(browser, page_errors: list[str], *, token: str | None) -> Iterator[object]:
    """A page that records script errors and requests off loopback.

    With ``token`` the page starts with it in sessionStorage, as after a login.
    """
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    if token is not None:
        script = f"sessionStorage.setItem('edgefleet.apiToken', {json.dumps(token)})"
        context.add_init_script(script)
    page = context.new_page()
    errors = page_errors
    external: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )

    def check_host(route) -> None:
        host = urlsplit(route.request.url).hostname
        if host not in ("127.0.0.1", "localhost") and not route.request.url.startswith("data:"):
            external.append(route.request.url)
            route.abort()
            return
        route.continue_()

    page.route("**/*", check_host)
    yield page
    context.close()
    assert errors == [], f"the page logged errors: {errors}"
    assert external == [], f"the page requested resources off loopback: {external}"


@pytest.fixture
def page(browser, fleet: HttpFleet, page_errors: list[str]) -> Iterator[object]:
    """A dashboard page logged in with an operator token."""
    with open_context(browser, page_errors, token=fleet.operator_token) as page:
        yield page


@pytest.fixture
def anonymous_page(browser, page_errors: list[str]) -> Iterator[object]:
    """A dashboard page without a token."""
    with open_context(browser, page_errors, token=None) as page:
        yield page


def open_page(page, fleet: HttpFleet, route: str) -> None:
    page.goto(f"{fleet.url}/#{route}")


def api(fleet: HttpFleet, path: str) -> dict:
    return get_json(f"{fleet.url}/api/v1{path}", token=fleet.operator_token)


def path_points(d: str) -> int:
    """Count the points of an SVG path drawn with M and L commands only."""
    return len(re.findall(r"[ML]", d))


def test_dashboard_index_served_at_root(fleet):
    with urllib.request.urlopen(f"{fleet.url}/", timeout=10) as response:
        body = response.read().decode()
    assert response.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="app.js"></script>' in body
    assert "http://" not in body, "no external resources"
    assert "https://" not in body, "no external resources"


def test_fleet_page_counts_devices_and_budgets(page, fleet):
    open_page(page, fleet, "/")
    page.locator("table.devices tbody tr").nth(1).wait_for(timeout=PAGE_TIMEOUT_MS)
    devices = {device["device_id"]: device for device in api(fleet, "/devices")["devices"]}

    assert page.locator("[data-tile=devices] .value").inner_text() == "2"
    assert page.locator("[data-tile=online] .value").inner_text() == "2"
    assert page.locator("[data-tile=offline] .value").inner_text() == "0"
    assert devices["cam-1"]["within_budget"] is True
    assert devices["cam-2"]["within_budget"] is False
    assert page.locator("[data-tile=within-budget] .value").inner_text() == "1"
    assert page.locator("[data-tile=over-budget] .value").inner_text() == "1"

    for device_id, expected in (("cam-1", "within budget"), ("cam-2", "over budget")):
        row = page.locator("table.devices tbody tr", has=page.get_by_role("link", name=device_id))
        assert row.count() == 1
        assert expected in row.inner_text()
        assert "online" in row.inner_text()
    # One table per profile, each captioned with its budget.
    assert page.locator("table.devices caption").count() == 2
    assert "p95 budget 50.0 ms" in page.locator("table.devices caption").first.inner_text()


def test_fleet_page_links_to_device_page(page, fleet):
    open_page(page, fleet, "/")
    page.get_by_role("link", name="cam-1").click()
    page.get_by_role("heading", name="Device cam-1").wait_for(timeout=PAGE_TIMEOUT_MS)
    assert page.url.endswith("#/devices/cam-1")


def chart_counts(page) -> dict[str, int]:
    counts = {}
    for chart in ("latency", "cpu", "memory", "temperature"):
        series = page.locator(f"#chart-{chart} path.series")
        if series.count() == 0:
            counts[chart] = 0
            continue
        count = int(series.get_attribute("data-count"))
        assert path_points(series.get_attribute("d")) == count, f"{chart} path points"
        counts[chart] = count
    return counts


def test_device_page_charts_match_telemetry(page, fleet):
    def telemetry() -> list[dict]:
        return api(fleet, "/devices/cam-1/telemetry?limit=5000")["points"]

    before = telemetry()
    open_page(page, fleet, "/devices/cam-1")
    page.locator("#chart-cpu path.series").wait_for(timeout=PAGE_TIMEOUT_MS)
    drawn = chart_counts(page)
    after = telemetry()

    # The page read the telemetry between the two API reads.
    assert len(before) <= drawn["cpu"] <= len(after)
    assert len(before) <= drawn["memory"] <= len(after)
    serving_before = sum(1 for point in before if point["requests"] > 0)
    serving_after = sum(1 for point in after if point["requests"] > 0)
    assert serving_before > 0, "the agents served requests, so the latency chart has data"
    assert serving_before <= drawn["latency"] <= serving_after
    with_temperature = sum(1 for point in after if point["temperature_c"] is not None)
    assert drawn["temperature"] <= with_temperature

    budget = page.locator("#chart-latency .budget")
    assert float(budget.get_attribute("data-value")) == DEVICES["cam-1"]


def test_device_page_marks_controller_events(page, fleet):
    events = api(fleet, "/events?device_id=cam-1&kind=deployed")["events"]
    assert events, "the initial deployment is an event"
    open_page(page, fleet, "/devices/cam-1")
    markers = page.locator("#chart-latency .event-marker[data-kind=deployed]")
    markers.first.wait_for(timeout=PAGE_TIMEOUT_MS)

    assert markers.count() == len(events)
    assert "deployed" in markers.first.locator("title").text_content()
    # Every chart marks the same events.
    assert page.locator("#chart-cpu .event-marker[data-kind=deployed]").count() == len(events)


def test_device_page_is_labelled_for_assistive_technology(page, fleet):
    open_page(page, fleet, "/devices/cam-2")
    page.locator("#chart-latency svg").wait_for(timeout=PAGE_TIMEOUT_MS)

    for chart in page.locator("svg.chart").all():
        assert chart.get_attribute("role") == "img"
        title_id, desc_id = chart.get_attribute("aria-labelledby").split()
        assert chart.locator(f"[id='{title_id}']").text_content()
        assert "samples" in chart.locator(f"[id='{desc_id}']").text_content()
    for control in page.locator("#device-actions select, #device-actions input").all():
        assert control.evaluate("element => element.labels.length") == 1
    # A window in which the agent served no request (while it swaps variants, say) reads
    # within budget, so the test waits for the page to show the verdict of a served one.
    page.locator("#device-facts", has_text="over budget").wait_for(timeout=PAGE_TIMEOUT_MS)


def latest_deployment(fleet: HttpFleet, device_id: str) -> dict:
    deployments = api(fleet, f"/devices/{device_id}/deployments")["deployments"]
    return max(deployments, key=lambda deployment: deployment["created_at"])


def test_deploy_button_deploys_selected_variant(page, fleet):
    before = latest_deployment(fleet, "cam-1")
    open_page(page, fleet, "/devices/cam-1")
    select = page.locator("#deploy-variant")
    select.wait_for(timeout=PAGE_TIMEOUT_MS)
    ladder = api(fleet, "/devices/cam-1/ladder")["ladder"]
    target = ladder[-1]["variant_id"]
    select.select_option(target)
    page.locator("#deploy-reason").fill("dashboard test deployment")
    page.locator("#deploy-button").click()

    page.locator("#notice").get_by_text("Deployment").wait_for(timeout=PAGE_TIMEOUT_MS)
    deployment = latest_deployment(fleet, "cam-1")
    assert deployment["deployment_id"] != before["deployment_id"]
    assert deployment["variant_id"] == target
    requested = api(fleet, "/events?device_id=cam-1&kind=deploy_requested")["events"][-1]
    assert requested["details"]["deployment_id"] == deployment["deployment_id"]
    assert requested["reason"] == "dashboard test deployment"
    assert deployment["deployment_id"][:12] in page.locator("#notice").inner_text()
    wait_until(
        lambda: latest_deployment(fleet, "cam-1")["state"] == "active",
        timeout_s=60,
        what="the dashboard's deployment to become active",
    )


def test_pin_button_pins_and_unpins(page, fleet):
    open_page(page, fleet, "/devices/cam-2")
    button = page.locator("#pin-button")
    button.wait_for(timeout=PAGE_TIMEOUT_MS)
    assert api(fleet, "/devices/cam-2")["pinned"] is False

    button.click()
    page.get_by_role("button", name="Unpin").wait_for(timeout=PAGE_TIMEOUT_MS)
    assert api(fleet, "/devices/cam-2")["pinned"] is True
    assert "is pinned" in page.locator("#notice").inner_text()

    page.get_by_role("button", name="Unpin").click()
    page.get_by_role("button", name="Pin to target variant").wait_for(timeout=PAGE_TIMEOUT_MS)
    assert api(fleet, "/devices/cam-2")["pinned"] is False


def test_model_page_draws_every_variant_and_front(page, fleet):
    variants = api(fleet, f"/models/{fleet.model_id}/variants")
    open_page(page, fleet, "/models")
    page.locator("section[data-profile] svg.pareto").nth(1).wait_for(timeout=PAGE_TIMEOUT_MS)

    assert len(variants["profiles"]) == len(DEVICES)
    for profile in variants["profiles"]:
        section = page.locator(f"section[data-profile='{profile['profile_name']}']")
        points = section.locator("circle.variant")
        assert points.count() == len(profile["variants"])
        assert section.locator("circle.variant.on-ladder").count() == len(profile["ladder"])
        front = section.locator("path.front")
        assert int(front.get_attribute("data-count")) == len(profile["ladder"])
        assert path_points(front.get_attribute("d")) == len(profile["ladder"])
        drawn_ids = {point.get_attribute("data-variant") for point in points.all()}
        assert drawn_ids == {variant["variant_id"] for variant in profile["variants"]}
        # The ladder table lists the rungs, most accurate first.
        rows = section.locator("table tbody tr")
        assert rows.count() == len(profile["ladder"])


def test_events_page_follows_new_events(page, fleet):
    open_page(page, fleet, "/events")
    rows = page.locator("#event-table tbody tr")
    rows.first.wait_for(timeout=PAGE_TIMEOUT_MS)
    newest = api(fleet, "/events?limit=1")["events"][0]
    assert rows.first.locator("td").first.inner_text() == str(newest["id"])

    variant_id = fleet.controller.ladder("cam-1")[0].variant_id
    fleet.controller.deploy("cam-1", variant_id, reason="events page test")
    newer = api(fleet, "/events?limit=1")["events"][0]
    assert newer["id"] > newest["id"]
    page.wait_for_function(
        "[...document.querySelectorAll('#event-table tbody tr td:first-child')]"
        f".some((cell) => cell.textContent === '{newer['id']}')",
        timeout=PAGE_TIMEOUT_MS,
    )


def test_events_page_filters_by_device(page, fleet):
    open_page(page, fleet, "/events")
    page.locator("#event-table tbody tr").first.wait_for(timeout=PAGE_TIMEOUT_MS)
    page.locator("#event-device").fill("cam-2")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_function(
        "[...document.querySelectorAll('#event-table tbody tr td:nth-child(4)')]"
        ".every((cell) => cell.textContent === 'cam-2')",
        timeout=PAGE_TIMEOUT_MS,
    )
    expected = len(api(fleet, "/events?device_id=cam-2&limit=200")["events"])
    assert page.locator("#event-table tbody tr").count() >= expected


def rollout_state(fleet: HttpFleet, rollout_id: str) -> str:
    return api(fleet, f"/rollouts/{rollout_id}")["state"]


def test_rollouts_page_pauses_resumes_and_aborts(page, fleet):
    body = (
        b'{"target": "devices:cam-1", "waves": ["100%"], '
        b'"gates": {"soak_s": 600, "min_samples": 1}}'
    )
    request = urllib.request.Request(
        f"{fleet.url}/api/v1/rollouts",
        data=body,
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {fleet.operator_token}",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        rollout_id = json.load(response)["rollout_id"]
    page.on("dialog", lambda dialog: dialog.accept())
    open_page(page, fleet, "/rollouts")

    label = f"rollout {rollout_id[:12]}"
    page.get_by_role("button", name=f"pause {label}").click()
    page.get_by_role("button", name=f"resume {label}").wait_for(timeout=PAGE_TIMEOUT_MS)
    assert rollout_state(fleet, rollout_id) == "paused"

    page.get_by_role("button", name=f"resume {label}").click()
    page.get_by_role("button", name=f"pause {label}").wait_for(timeout=PAGE_TIMEOUT_MS)
    assert rollout_state(fleet, rollout_id) == "running"

    page.get_by_role("button", name=f"abort {label}").click()
    deadline = time.monotonic() + 10
    while rollout_state(fleet, rollout_id) != "aborted" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert rollout_state(fleet, rollout_id) == "aborted"
    row = page.locator("table.rollouts tbody tr", has_text=rollout_id[:12])
    page.wait_for_function(
        "[...document.querySelectorAll('table.rollouts tbody tr')]"
        f".some((row) => row.textContent.includes('{rollout_id[:12]}') "
        "&& row.textContent.includes('aborted'))",
        timeout=PAGE_TIMEOUT_MS,
    )
    assert row.get_by_role("button").count() == 0


def test_unknown_route_says_so(page, fleet):
    open_page(page, fleet, "/nowhere")
    page.get_by_role("heading", name="Page not found").wait_for(timeout=PAGE_TIMEOUT_MS)
    assert "No dashboard page at /nowhere" in page.locator("#notice").inner_text()


def test_unknown_device_shows_api_error(page, fleet, page_errors):
    open_page(page, fleet, "/devices/missing-1")
    page.locator("#notice.error").wait_for(timeout=PAGE_TIMEOUT_MS)
    assert "missing-1" in page.locator("#notice").inner_text()
    # The page keeps polling, so close it before reading the console: the browser logs
    # the API's 404 responses, but the page itself raised nothing.
    page.context.close()
    assert page_errors
    assert all("404" in error for error in page_errors)
    page_errors.clear()


def test_token_fragment_logs_in_and_leaves_url(anonymous_page, fleet):
    page = anonymous_page
    entries_before = page.evaluate("history.length")
    page.goto(f"{fleet.url}/#token={fleet.operator_token}")

    page.locator("table.devices tbody tr").nth(1).wait_for(timeout=PAGE_TIMEOUT_MS)
    assert fleet.operator_token not in page.url
    assert page.url.endswith("/#/")
    stored = page.evaluate("sessionStorage.getItem('edgefleet.apiToken')")
    assert stored == fleet.operator_token
    assert fleet.operator_token not in page.evaluate("location.href")
    # The fragment replaced the history entry instead of adding one after it.
    assert page.evaluate("history.length") == entries_before + 1


def test_without_token_form_shows_command(anonymous_page, fleet):
    page = anonymous_page
    page.goto(f"{fleet.url}/#/")

    page.get_by_role("heading", name="API token needed").wait_for(timeout=PAGE_TIMEOUT_MS)
    assert "edgefleet controller api-token create" in page.locator("main pre").inner_text()
    assert page.locator("table.devices").count() == 0

    page.get_by_role("textbox", name="API token").fill("two words")
    page.get_by_role("button", name="Use token").click()
    assert "Invalid token" in page.locator("#notice").inner_text()
    assert page.evaluate("sessionStorage.getItem('edgefleet.apiToken')") is None

    page.get_by_role("textbox", name="API token").fill(fleet.read_token)
    page.get_by_role("button", name="Use token").click()
    page.locator("table.devices tbody tr").nth(1).wait_for(timeout=PAGE_TIMEOUT_MS)
    assert page.evaluate("sessionStorage.getItem('edgefleet.apiToken')") == fleet.read_token


def test_rejected_token_shows_form_again(anonymous_page, fleet, page_errors):
    page = anonymous_page
    unknown = "efa1.0123456789abcdef." + "A" * 43
    page.goto(f"{fleet.url}/#token={unknown}")

    page.get_by_role("heading", name="API token needed").wait_for(timeout=PAGE_TIMEOUT_MS)
    assert "unknown API token" in page.locator("#notice").inner_text()
    assert page.evaluate("sessionStorage.getItem('edgefleet.apiToken')") is None
    # The browser logs the API's 401 responses, but the page itself raised nothing.
    assert page_errors
    assert all("401" in error for error in page_errors)
    page_errors.clear()


def test_read_token_cannot_pin(browser, fleet, page_errors):
    with open_context(browser, page_errors, token=fleet.read_token) as page:
        open_page(page, fleet, "/devices/cam-1")
        button = page.locator("#pin-button")
        button.wait_for(timeout=PAGE_TIMEOUT_MS)
        button.click()
        page.locator("#notice.error").wait_for(timeout=PAGE_TIMEOUT_MS)

        assert "--role operator" in page.locator("#notice").inner_text()
        assert api(fleet, "/devices/cam-1")["pinned"] is False
        assert all("403" in error for error in page_errors)
        page_errors.clear()


def test_static_files_ship_next_to_controller():
    from edgefleet import controller

    web = Path(controller.__file__).parent / "web"
    for name in ("index.html", "app.js", "api.js", "charts.js", "style.css", "pages/device.js"):
        assert (web / name).is_file(), name
