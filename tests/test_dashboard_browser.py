"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium driven by
Playwright; never a downloaded browser), against real Mosquitto, a real ``fedmq serve``
and real ``fedmq-site run`` sites registered with their locations, plus two protocol-level
training sites (tests/helpers/fake_trainer.py) for a run.

- the map shows one marker per site, at its registered location;
- ``kill -9`` a site: its marker turns offline, without a reload, within keepalive x 1.5 + 2 s;
- a run's learning curve renders its rounds;
- screenshots of every page go to ``$FEDMQ_ARTIFACTS`` (default tests/artifacts/dashboard);
- every request every page made went to 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from coordinator.admin.signing import generate_keypair
from coordinator.training.aggregate import dump_npz
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import REPO, Coordinator, fedmq, sites_json, wait_until
from tests.helpers.fake_trainer import FakeTrainer
from tests.helpers.site_proc import SiteProc, site_settings

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
KEEPALIVE = 5  # s: the sites' MQTT keepalive (the least they accept; the Will comes after 1.5x)
TASK, CODE_HASH = "toy", "d" * 64
ROUNDS = 3
PLACES = {  # site -> (lat, lon, hierarchy)
    "lyon": (45.764, 4.8357, {"enterprise": "acme", "site": "lyon", "line": "press"}),
    "porto": (41.1579, -8.6291, {"enterprise": "acme", "site": "porto", "line": "cnc"}),
    "osaka": (34.6937, 135.5023, {"enterprise": "acme", "site": "osaka", "line": "pump"}),
}


def artifacts() -> Path:
    out = Path(os.environ.get("FEDMQ_ARTIFACTS") or REPO / "tests" / "artifacts") / "dashboard"
    out.mkdir(parents=True, exist_ok=True)
    return out


@dataclass
class Env:
    url: str
    db: Path
    sites: dict[str, SiteProc]
    page: Any
    requests: list[str] = field(default_factory=list)


def _answer(rnd: int, glob: dict[str, np.ndarray] | None) -> tuple[bytes, int]:
    base = glob or {"w": np.zeros(3, np.float32)}
    return dump_npz({k: v + np.float32(1) for k, v in base.items()}), 100


def _api_url(db: Path) -> str | None:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'api_url'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return None if row is None else str(row[0])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    if not CHROMIUM.exists():
        pytest.fail("no /usr/bin/chromium: run .ci/setup (it installs chromium)")
    from playwright.sync_api import sync_playwright

    tmp = tmp_path_factory.mktemp("dash")
    broker = Broker(tmp)
    broker.start()
    prefix = f"dash-{uuid.uuid4().hex[:8]}/fedmq/v1"
    generate_keypair(tmp / "k.key", tmp / "k.pub")
    coord = Coordinator(tmp / "c.db", broker.port, prefix, ("--signing-key", str(tmp / "k.key")))
    sites: dict[str, SiteProc] = {}
    trainers: list[FakeTrainer] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            coord.start().wait_ready(60)
            for name, (lat, lon, hier) in PLACES.items():
                settings = site_settings(
                    tmp, broker.port, prefix, site_id=name, rate_hz=5.0,
                    location={"lat": lat, "lon": lon}, hierarchy=hier,
                    mqtt={"keepalive": KEEPALIVE},
                )  # fmt: skip
                sites[name] = SiteProc(tmp / name, settings).start()
            trainers = [
                FakeTrainer(broker.port, prefix, f"trainer-{i}", TASK, CODE_HASH, _answer,
                            rows=1000).start()
                for i in range(2)
            ]  # fmt: skip
            want = [*PLACES, *(t.site for t in trainers)]
            wait_until(
                lambda: all(sites_json(coord.db).get(s, {}).get("state") == "online"
                            for s in want),
                120, f"{want} online", step=0.5,
            )  # fmt: skip
            url = wait_until(lambda: _api_url(coord.db), 30, "the dashboard URL announced")
            context = browser.new_context(viewport={"width": 1400, "height": 950})
            page = context.new_page()
            e = Env(url, coord.db, sites, page)
            context.on("request", lambda r: e.requests.append(r.url))
            yield e
            context.close()
        finally:
            browser.close()
            for t in trainers:
                t.stop()
            for p in sites.values():
                p.kill()
            coord.kill()
            broker.kill()


def _open(env: Env, path: str) -> None:
    env.page.goto(env.url + path)
    env.page.wait_for_selector("body[data-ready='1']", timeout=30_000)


def _shot(env: Env, name: str) -> Path:
    out = artifacts() / f"{name}.png"
    env.page.screenshot(path=str(out))
    return out


def test_map_shows_one_marker_per_site_at_its_location(env: Env) -> None:
    _open(env, "/fleet")
    page = env.page
    page.wait_for_function(
        "n => document.querySelectorAll('path.site-marker[data-state=online]').length === n",
        arg=len(PLACES), timeout=30_000,
    )  # fmt: skip
    markers = page.evaluate(
        """() => Object.entries(window.fedmqFleet.markers).map(([site, m]) => {
             const ll = m.getLatLng(), box = m._path.getBoundingClientRect(),
                   map = document.getElementById('map').getBoundingClientRect(),
                   pt = m._map.latLngToContainerPoint(ll),
                   top = document.elementFromPoint(box.left + box.width / 2,
                                                   box.top + box.height / 2);
             return {site, lat: ll.lat, lon: ll.lng, state: m._path.dataset.state,
                     visible: top === m._path,
                     dx: box.left + box.width / 2 - map.left - pt.x,
                     dy: box.top + box.height / 2 - map.top - pt.y};
           })"""
    )
    # The training sites registered no location: no marker for them.
    assert sorted(m["site"] for m in markers) == sorted(PLACES)
    for m in markers:
        lat, lon, _ = PLACES[m["site"]]
        assert (m["lat"], m["lon"]) == (lat, lon)
        assert m["state"] == "online"
        assert abs(m["dx"]) < 2 and abs(m["dy"]) < 2, m  # drawn where the map puts it
        assert m["visible"], m  # on top: nothing (the basemap) covers it
    rows = page.eval_on_selector_all("#sites tbody tr", "rs => rs.map(r => r.dataset.site)")
    assert set(rows) == {*PLACES, "trainer-0", "trainer-1"}
    page.fill("#filter", "porto")
    page.wait_for_function("document.querySelectorAll('#sites tbody tr').length === 1")
    page.fill("#filter", "")
    _shot(env, "fleet")


def test_killed_site_turns_offline_without_reload(env: Env) -> None:
    _open(env, "/fleet")
    page = env.page
    page.evaluate("window.__sameDocument = 'yes'")
    page.wait_for_selector("path.site-marker[data-site=osaka][data-state=online]")
    t0 = time.monotonic()
    env.sites["osaka"].kill()  # kill -9: no clean shutdown, the broker sends its Will
    limit = KEEPALIVE * 1.5 + 2
    page.wait_for_selector(
        "path.site-marker[data-site=osaka][data-state=offline]", timeout=(limit + 30) * 1000
    )
    elapsed = time.monotonic() - t0
    assert page.evaluate("window.__sameDocument") == "yes"  # no reload happened
    fill = page.get_attribute("path.site-marker[data-site=osaka]", "fill")
    assert fill == "#c62828"
    _shot(env, "fleet-site-offline")
    (artifacts() / "kill-to-offline.txt").write_text(f"{elapsed:.2f} s (limit {limit} s)\n")
    assert elapsed <= limit, f"marker offline after {elapsed:.1f} s (limit {limit} s)"


def test_run_learning_curve_renders_its_rounds(env: Env) -> None:
    proc = fedmq(
        "train", "--task", TASK, "--rounds", str(ROUNDS), "--min-sites", "2",
        "--round-timeout", "30", "--wait-sites", "20", "--db", str(env.db),
        timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = proc.stdout.split("run ", 1)[1].split(":", 1)[0]
    _open(env, f"/training#{run_id}")
    page = env.page
    page.wait_for_function(
        "id => window.fedmqTraining.run === id && window.fedmqTraining.curve", arg=run_id
    )
    curve = page.evaluate("window.fedmqTraining.curve")
    assert curve["rounds"] == list(range(1, ROUNDS + 1)), curve
    assert all(v is not None for v in curve["global"]), curve
    assert sorted(curve["sites"]) == ["trainer-0", "trainer-1"]
    assert page.locator("#curve canvas").count() == 1  # uPlot drew it
    # Every site took part in every round (the timeline's cells), models have hashes.
    assert page.locator("#timeline td.cell.ok").count() == ROUNDS * 2
    hashes = page.eval_on_selector_all("#models td.hash", "cs => cs.map(c => c.title)")
    assert len(hashes) == ROUNDS and all(len(h) == 64 for h in hashes)
    _shot(env, "training")


def test_site_page_charts_live_samples(env: Env) -> None:
    _open(env, "/sites/lyon")
    page = env.page
    assert page.locator("#charts .chart").count() == 1  # device counter, sensor n
    page.wait_for_function("(window.fedmqSite.samples || 0) >= 2", timeout=30_000)
    _shot(env, "site")


def test_screenshots_of_every_other_page(env: Env) -> None:
    for path, name in (("/events", "dead-letters-events"), ("/alarms", "alarms")):
        _open(env, path)
        _shot(env, name)
    assert env.page.text_content("#active-alarms tbody") == "no active alarm"  # none raised
    for name in ("fleet", "fleet-site-offline", "training", "site", "dead-letters-events",
                 "alarms"):  # fmt: skip
        assert (artifacts() / f"{name}.png").stat().st_size > 10_000, name


def test_no_request_leaves_the_host(env: Env) -> None:
    assert len(env.requests) > 20
    hosts = {urlsplit(u).hostname for u in env.requests if not u.startswith("data:")}
    assert hosts == {"127.0.0.1"}, hosts


def test_docs_images_are_screenshots(env: Env) -> None:
    """docs/img holds two of the screenshots for the README (refreshed when asked)."""
    if os.environ.get("FEDMQ_UPDATE_DOCS_IMG"):
        for name in ("fleet", "training"):
            shutil.copy(
                artifacts() / f"{name}.png", REPO / "docs" / "img" / f"dashboard-{name}.png"
            )
    for name in ("fleet", "training"):
        assert (REPO / "docs" / "img" / f"dashboard-{name}.png").stat().st_size > 10_000
