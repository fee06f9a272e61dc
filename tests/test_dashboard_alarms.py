"""The dashboard's alarms in a real headless Chromium (Debian's /usr/bin/chromium driven by
Playwright, the launch flags of tests/test_dashboard_browser.py), against a real Mosquitto
and a real ``fedmq serve``; the site is played at the protocol level (an MQTT client
publishing valid registration, prediction and alarm messages through the broker).

- an alarm the site raises appears on the open Alarms page without a reload, and in the
  Fleet table's alarms column and on the Site page (with the site's newest prediction);
- Acknowledge (the token as the cookie a ``?token=`` visit sets) records who and when
  (``fedmq alarms --json``) and the page shows it acknowledged; without the token it is
  refused and nothing changes;
- the site clears the alarm: it leaves the active list, live;
- screenshots go to ``$FEDMQ_ARTIFACTS`` (default tests/artifacts/dashboard);
- every request the pages made went to 127.0.0.1.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest

from coordinator.api.token import read_token, token_path
from schemas import Alarm, Prediction, PredictionOutput, Registration, Topics, encode
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import Coordinator, fedmq, wait_until
from tests.helpers.mqtt import TestClient
from tests.test_dashboard_browser import CHROMIUM, CHROMIUM_FLAGS, _api_url, artifacts

pytestmark = pytest.mark.slow

SITE = "plant-a"


def _alarm(state: Literal["active", "cleared"], ts: int, seq: int) -> Alarm:
    return Alarm(
        site=SITE, session=1, seq=seq, ts=ts, device="engine-7", alarm_id="rul_low",
        state=state, severity="critical", rule="rul < 30", value=24.0, model_version="r-1:5",
        since=ts,
    )  # fmt: skip


def _alarms(db: Path) -> list[dict[str, Any]]:
    return list(json.loads(fedmq("alarms", "--db", str(db), "--json").stdout))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    if not CHROMIUM.exists():
        pytest.fail("no /usr/bin/chromium: run .ci/setup (it installs chromium)")
    from playwright.sync_api import sync_playwright

    broker = Broker(tmp_path)
    broker.start()
    prefix = f"dash-{uuid.uuid4().hex[:8]}/fedmq/v1"
    coord = Coordinator(tmp_path / "c.db", broker.port, prefix)
    site: TestClient | None = None
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            coord.start().wait_ready(60)
            t = Topics(prefix)
            site = TestClient(broker.port).connect()
            reg = Registration(site=SITE, session=1)
            site.publish(t.registration(SITE), encode(reg), retain=True)
            url = wait_until(lambda: _api_url(coord.db), 30, "the dashboard URL announced")
            context = browser.new_context(viewport={"width": 1400, "height": 800})
            context.on("request", lambda r: requests.append(r.url))
            yield {"url": url, "db": coord.db, "site": site, "topics": t,
                   "page": context.new_page(), "requests": requests}  # fmt: skip
            context.close()
        finally:
            browser.close()
            if site is not None:
                site.close()
            coord.kill()
            broker.kill()


def _open(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)


def test_alarm_appears_is_acknowledged_and_clears_live(world: dict[str, Any]) -> None:
    page, url, db, t = world["page"], world["url"], world["db"], world["topics"]
    site: TestClient = world["site"]
    _open(page, url + "/alarms")
    page.evaluate("window.__sameDocument = 'yes'")
    assert page.text_content("#active-alarms tbody") == "no active alarm"
    now = time.time_ns() // 1_000_000
    pred = Prediction(
        site=SITE, session=1, seq=1, ts=now, device="engine-7", model_version="r-1:5",
        task="cmapss_rul", window_end=now,
        outputs={"rul": PredictionOutput(value=24.0, unit="cycles")},
    )  # fmt: skip
    site.publish(t.prediction(SITE, "engine-7"), encode(pred))
    site.publish(t.alarm(SITE, "engine-7"), encode(_alarm("active", now, 2)), retain=True)

    wait_until(lambda: _alarms(db), 30, "the alarm stored")
    # Raised: on the open page without a reload.
    page.wait_for_function(
        "document.querySelector('#active-alarms tr[data-alarm] button.ack') !== null",
        timeout=30_000,
    )
    row = page.locator("#active-alarms tr[data-alarm]")
    assert row.count() == 1
    cells = row.locator("td").all_text_contents()
    assert cells[:6] == [SITE, "engine-7", "rul < 30 rul_low", "24", "critical", "active"]
    assert cells[7] == "r-1:5" and cells[8] == ""
    assert page.evaluate("window.__sameDocument") == "yes"
    [alarm] = _alarms(db)
    assert alarm["acked_by"] is None

    # Acknowledge without the token (loopback reads need none, this does): refused.
    page.click("button.ack")
    page.wait_for_function("document.getElementById('alarm-note').textContent.includes('token')")
    assert _alarms(db)[0]["acked_by"] is None
    _open(page, url + "/alarms?token=" + str(read_token(token_path(db))))  # sets the cookie
    assert "token" not in page.url
    page.evaluate("window.__sameDocument = 'yes'")
    page.fill("#ack-by", "alice")
    page.dispatch_event("#ack-by", "change")
    page.click("button.ack")
    page.wait_for_selector(
        "#active-alarms tr[data-alarm] td.acked-by:text('alice')", timeout=30_000
    )
    [acked] = _alarms(db)
    assert acked["acked_by"] == "alice" and acked["acked_at"] >= now
    assert page.locator("#active-alarms button.ack").count() == 0
    artifacts().mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(artifacts() / "alarms-acked.png"))

    # The Fleet table counts it; the Site page shows it and the newest prediction.
    _open(page, url + "/fleet")
    page.wait_for_selector(f"#sites tr[data-site='{SITE}']")
    fleet_cells = page.locator(f"#sites tr[data-site='{SITE}'] td").all_text_contents()
    assert fleet_cells[7] == "1"  # the alarms column
    _open(page, url + f"/sites/{SITE}")
    page.wait_for_selector("#alarm-rows tbody tr")
    assert "rul < 30" in page.text_content("#alarm-rows") and "alice" in page.text_content(
        "#alarm-rows"
    )
    predictions = page.text_content("#prediction-rows")
    assert "r-1:5" in predictions and "rul = 24 cycles" in predictions
    page.screenshot(path=str(artifacts() / "site-alarm-prediction.png"))

    # Cleared by the site: it leaves the active list on the open page.
    _open(page, url + "/alarms")
    page.evaluate("window.__sameDocument = 'yes'")
    site.publish(t.alarm(SITE, "engine-7"), encode(_alarm("cleared", now + 1000, 3)), retain=True)
    page.wait_for_function(
        "document.getElementById('active-alarms').textContent.includes('no active alarm')",
        timeout=30_000,
    )
    assert page.evaluate("window.__sameDocument") == "yes"
    recent = page.locator("#recent-alarms tr[data-alarm] td").all_text_contents()
    assert recent[0] == SITE and recent[5] == "cleared"
    assert _alarms(db)[0]["state"] == "cleared"
    page.screenshot(path=str(artifacts() / "alarms-cleared.png"))
    assert (artifacts() / "alarms-cleared.png").stat().st_size > 10_000

    # No request left the host.
    assert len(world["requests"]) > 10
    hosts = {urlsplit(u).hostname for u in world["requests"] if not u.startswith("data:")}
    assert hosts == {"127.0.0.1"}, hosts
