"""The dashboard's JSON API, stream and /metrics on a real SQLite store (synthetic sites
written through the Store interface), served by the real Starlette app in-process; and
against a real ``fedmq serve``: every state-changing endpoint refuses a missing or wrong
token and changes nothing, the pages and vendored assets are served.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from coordinator.store import AlarmRow, DurableRow, HeartbeatRow, SiteRecord, SqliteStore
from coordinator.web.app import STATIC, Dashboard
from coordinator.web.hub import Hub
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import Coordinator, wait_until

STATES = ("online", "offline")


def synthetic_fleet(db: Path, n: int, seed: int = 1, heartbeats: int = 0) -> dict[str, Any]:
    """``n`` registered sites with locations, half online, written through the Store."""
    rnd = random.Random(seed)
    store = SqliteStore(db)
    now = time.time_ns() // 1_000_000
    sites: dict[str, Any] = {}
    records = []
    for i in range(n):
        site = f"s{i:04d}"
        lat, lon = round(rnd.uniform(-60, 70), 4), round(rnd.uniform(-170, 170), 4)
        reg = {
            "kind": "registration", "site": site, "name": f"plant {i}",
            "hierarchy": {"enterprise": "acme", "site": f"p{i % 17}", "line": f"l{i % 3}"},
            "location": {"lat": lat, "lon": lon}, "device": {"hostname": f"h{i}"},
            "tasks": [{"name": "rul", "code_hash": "a" * 64}],
            "telemetry": [{"device": "pump", "source": "file",
                           "sensors": [{"name": "t", "unit": "C"}]}],
        }  # fmt: skip
        online = i % 2 == 0
        records.append(
            SiteRecord(site, json.dumps(reg), "online" if online else "offline", 1,
                       last_alive=now if online else now - 3_600_000, last_seen=now,
                       interval_s=3600.0, outbox_depth=i % 7, acked=10 + i,
                       last_acked_reported=8 + i, cpu_percent=12.5)
        )  # fmt: skip
        sites[site] = {"lat": lat, "lon": lon, "state": "online" if online else "offline"}
    store.save_sites(records)
    for k in range(heartbeats):
        store.add_heartbeats(
            [
                HeartbeatRow(site=s, received_at=now - (heartbeats - k) * 10_000, ts=now,
                             session=1, interval_s=10.0, uptime_s=1.0, cpu_percent=10.0 + k,
                             mem_percent=50.0, disk_percent=70.0, outbox_depth=k,
                             outbox_bytes=0, outbox_dropped=0, last_acked=k * 5, jobs_running=0)
                for s in list(sites)[:20]
            ]
        )  # fmt: skip
    store.commit()
    store.close()
    return sites


@pytest.fixture
def fleet_db(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    db = tmp_path / "fleet.db"
    return db, synthetic_fleet(db, 50, heartbeats=5)


@pytest.fixture
def client(fleet_db: tuple[Path, dict[str, Any]]) -> Iterator[tuple[TestClient, Dashboard]]:
    dash = Dashboard(fleet_db[0], "tok", loopback=True, interval=0.1)
    with TestClient(Starlette(routes=dash.routes())) as c:
        yield c, dash
    dash.stop()


def test_sites_api_has_every_site_at_its_location(client: Any, fleet_db: Any) -> None:
    c, _ = client
    body = c.get("/api/sites").json()
    got = {s["site"]: s for s in body["sites"]}
    assert set(got) == set(fleet_db[1])
    for site, want in fleet_db[1].items():
        assert (got[site]["lat"], got[site]["lon"]) == (want["lat"], want["lon"])
        assert got[site]["state"] == want["state"]
        assert got[site]["hierarchy"]["enterprise"] == "acme"
        assert got[site]["model"] is None and got[site]["alarms"] == 0  # none stored
    assert got["s0003"]["ack_lag"] == 2 and got["s0003"]["outbox_depth"] == 3
    assert {s["site"] for s in c.get("/api/sites?state=offline").json()["sites"]} == {
        s for s, v in fleet_db[1].items() if v["state"] == "offline"
    }


def test_site_detail_sparklines_and_errors(client: Any) -> None:
    c, _ = client
    d = c.get("/api/sites/s0001").json()
    assert d["registration"]["location"] and d["sensors"] == [
        {"device": "pump", "sensor": "t", "unit": "C"}
    ]
    assert d["alarms"] == [] and d["predictions"] == []
    assert c.get("/api/sites/nope").status_code == 404
    sp = c.get("/api/sparklines?sites=s0000,s0001,s0049").json()
    assert len(sp["series"]["s0000"]) == 5 and sp["series"]["s0049"] == []
    assert [r[1] for r in sp["series"]["s0001"]] == [10.0, 11.0, 12.0, 13.0, 14.0]
    assert c.get("/api/sites/s0001/telemetry").status_code == 400  # device, sensor needed
    assert c.get("/api/sites/s0001/telemetry?device=pump&sensor=t&since=x").status_code == 400
    assert c.get("/api/sites/s0001/telemetry?device=pump&sensor=t").json()["points"] == []
    assert c.get("/api/alarms").json()["alarms"] == []
    assert c.get("/api/sites/s0001/predictions").json()["predictions"] == []


def _store_alarm(db: Path, site: str, state: str, at: int, alarm_id: str = "rul_low") -> None:
    store = SqliteStore(db)
    store.save_alarms(
        [AlarmRow(site, "engine-7", alarm_id, state, "critical", "rul < 30", 12.5, "r-1:5",
                  at, at, at)]
    )  # fmt: skip
    store.commit()
    store.close()


def test_alarms_and_predictions_api(client: Any, fleet_db: Any) -> None:
    c, _ = client
    db = fleet_db[0]
    now = time.time_ns() // 1_000_000
    _store_alarm(db, "s0002", "active", now - 5_000)
    _store_alarm(db, "s0002", "active", now - 4_000, "temp_high")
    _store_alarm(db, "s0004", "cleared", now - 3_000)
    store = SqliteStore(db)
    for seq, rul in ((1, 80.0), (2, 25.0)):
        payload = {"kind": "prediction", "device": "engine-7", "model_version": "r-1:5",
                   "task": "cmapss_rul", "window_end": now - 60_000 + seq,
                   "outputs": {"rul": {"value": rul, "unit": "cycles"}}}  # fmt: skip
        store.add_messages(
            [DurableRow("s0002", seq, "prediction", 1, now, now, False, "engine-7", None, (),
                        json.dumps(payload))]
        )  # fmt: skip
    store.commit()
    store.close()
    every = c.get("/api/alarms").json()
    assert [(a["site"], a["alarm_id"], a["state"]) for a in every["alarms"]] == [
        ("s0004", "rul_low", "cleared"), ("s0002", "temp_high", "active"),
        ("s0002", "rul_low", "active")]  # fmt: skip
    assert every["active"] == 2
    active = c.get("/api/alarms?active=1").json()["alarms"]
    assert {a["alarm_id"] for a in active} == {"rul_low", "temp_high"}
    assert all(a["site"] == "s0002" and a["acked_by"] is None for a in active)
    assert c.get("/api/alarms?site=s0004").json()["alarms"][0]["state"] == "cleared"
    fleet = {s["site"]: s for s in c.get("/api/sites").json()["sites"]}
    assert fleet["s0002"]["alarms"] == 2 and fleet["s0004"]["alarms"] == 0
    site = c.get("/api/sites/s0002").json()
    assert {a["alarm_id"] for a in site["alarms"]} == {"rul_low", "temp_high"}
    assert [p["outputs"]["rul"] for p in site["predictions"]] == [{"value": 25.0, "unit": "cycles"}]
    assert site["predictions"][0]["model_version"] == "r-1:5"
    preds = c.get("/api/sites/s0002/predictions?device=engine-7&limit=5").json()["predictions"]
    assert [p["outputs"]["rul"]["value"] for p in preds] == [80.0, 25.0]  # oldest first
    assert len(c.get("/api/sites/s0002/predictions?limit=1").json()["predictions"]) == 1
    assert c.get("/api/sites/s0002/predictions?device=other").json()["predictions"] == []
    assert c.get("/api/sites/s0002/predictions?limit=x").status_code == 400
    assert 'fedmq_alarms_active{severity="critical"} 2.0' in c.get("/metrics").text


def test_hub_announces_alarm_changes(fleet_db: Any) -> None:
    db = fleet_db[0]
    hub = Hub(db, interval=0.05).start()
    # Raised just before the first tab attached (the tab may have loaded before it): the
    # first poll announces it rather than take it as already known.
    _store_alarm(db, "s0008", "active", time.time_ns() // 1_000_000)
    hub.attach()
    try:
        first = wait_until(
            lambda: [json.loads(d) for _, k, d in hub.since(hub.first_id - 1)[0] if k == "alarms"]
            or None, 30, "the alarm raised before the tab")  # fmt: skip
        assert [(a["site"], a["change"]) for a in first[0]["alarms"]] == [("s0008", "new")]
        wait_until(lambda: hub.polls >= 2, 30, "hub polling")
        start = hub.last_id

        def alarm_events() -> list[Any]:
            return [json.loads(d) for _, k, d in hub.since(start)[0] if k == "alarms"]

        now = time.time_ns() // 1_000_000
        _store_alarm(db, "s0006", "active", now)
        got = wait_until(lambda: alarm_events() or None, 30, "alarm raised event")
        assert [(a["site"], a["state"], a["change"]) for a in got[0]["alarms"]] == [
            ("s0006", "active", "new")
        ]
        assert got[0]["active"] == 2
        alarm = got[0]["alarms"][0]["id"]
        from coordinator.store.alarm_ack import ack_alarm

        ack_alarm(db, alarm, "ops")
        got = wait_until(lambda: alarm_events()[1:] or None, 30, "acked event")
        assert [(a["id"], a["change"], a["acked_by"]) for a in got[0]["alarms"]] == [
            (alarm, "acked", "ops")
        ]
        _store_alarm(db, "s0006", "cleared", now + 1)
        got = wait_until(lambda: alarm_events()[2:] or None, 30, "cleared event")
        assert [(a["id"], a["change"]) for a in got[0]["alarms"]] == [(alarm, "cleared")]
        assert got[0]["active"] == 1
    finally:
        hub.detach()
        hub.stop()


def test_metrics_prometheus_text(client: Any) -> None:
    c, _ = client
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'fedmq_sites{state="online"} 25.0' in text
    assert 'fedmq_sites{state="offline"} 25.0' in text
    assert 'fedmq_site_outbox_depth{site="s0003"} 3.0' in text
    assert 'fedmq_site_ack_lag_messages{site="s0003"} 2.0' in text
    for name in ("fedmq_ingest_messages_per_second", "fedmq_ingest_samples_per_second",
                 "fedmq_dead_letters", "fedmq_round_duration_seconds_bucket",
                 "fedmq_dashboard_polls_total", "fedmq_dashboard_streams"):  # fmt: skip
        assert name in text


def test_pages_and_vendored_assets_served(client: Any) -> None:
    c, _ = client
    for path in ("/fleet", "/sites/s0001", "/training", "/alarms", "/events"):
        r = c.get(path)
        assert r.status_code == 200 and "<nav>" in r.text, path
        for ref in [*_refs(r.text, 'src="'), *_refs(r.text, 'href="')]:
            if ref.startswith("/static/"):
                assert c.get(ref).status_code == 200, ref
    assert c.get("/").status_code == 200  # redirected to /fleet
    vendored = (STATIC / "vendor" / "VENDORED.md").read_text()
    for lib in (p for p in (STATIC / "vendor").iterdir() if p.is_dir()):
        assert (lib / "LICENSE").is_file(), lib
        assert lib.name in vendored, lib


def _refs(html: str, attr: str) -> list[str]:
    return [part.split('"', 1)[0] for part in html.split(attr)[1:]]


def test_vendored_sha256_match(client: Any) -> None:
    import hashlib

    rows = [
        line.split("|") for line in (STATIC / "vendor" / "VENDORED.md").read_text().splitlines()
        if line.startswith("| `")
    ]  # fmt: skip
    assert rows
    for row in rows:
        path, digest = row[1].strip().strip("`"), row[2].strip().strip("`")
        assert hashlib.sha256((STATIC / "vendor" / path).read_bytes()).hexdigest() == digest, path


def test_hub_sees_state_changes_and_replays_after_reconnect(fleet_db: Any) -> None:
    db, _ = fleet_db
    hub = Hub(db, interval=0.05).start()
    try:
        # An absence: give the thread six poll intervals to (wrongly) poll. Load can only
        # make this pass more easily, never fail it.
        time.sleep(0.3)
        assert hub.polls == 0  # no tab: no poll
        hub.attach()
        wait_until(lambda: hub.polls >= 2, 10, "hub polled")
        first = hub.last_id
        conn = sqlite3.connect(db)
        conn.execute("UPDATE sites SET status = 'offline' WHERE site = 's0000'")
        conn.commit()
        conn.close()

        def changed() -> Any:
            events, reset = hub.since(first)
            assert not reset
            return [e for e in events if e[1] == "sites"]

        got = wait_until(changed, 10, "a sites event")
        change = json.loads(got[0][2])
        assert change == [{**change[0], "site": "s0000", "state": "offline", "was": "online"}]
        # A tab that saw up to `first` gets the event again; one from another start resets.
        assert hub.since(first)[0] and hub.since(first - 10**9) == ([], True)
        assert hub.since(hub.last_id + 10) == ([], True)
        assert hub.since(hub.last_id) == ([], False)
    finally:
        hub.stop()


def test_stream_resumes_after_last_event_id(fleet_db: Any) -> None:
    db, _ = fleet_db
    dash = Dashboard(db, "tok", loopback=True, interval=0.05)
    try:
        from coordinator.api.server import ApiServer

        app = Starlette(routes=dash.routes())
        app.state.stop = dash.stop
        server = ApiServer(app, "127.0.0.1", 0).start()
        try:
            dash.hub.attach()  # as an open tab does: the hub polls
            wait_until(lambda: dash.hub.polls >= 2, 10, "hub polled")
            start = dash.hub.last_id
            conn = sqlite3.connect(db)
            conn.execute("UPDATE sites SET status = 'offline' WHERE site = 's0002'")
            conn.commit()
            conn.close()
            wait_until(lambda: dash.hub.last_id > start, 10, "an event")
            # A reconnecting tab sends the last id it saw: the missed event comes first.
            req = urllib.request.Request(server.url + "/api/stream",
                                         headers={"Last-Event-ID": str(start)})  # fmt: skip
            with urllib.request.urlopen(req, timeout=10) as r:
                lines = _sse_until(r, "event: sites")
            assert any('"site":"s0002"' in x for x in lines), lines
            assert any(x.startswith("id: ") and int(x[4:]) > start for x in lines)
            # An id the hub never gave (another daemon start): reset.
            req = urllib.request.Request(server.url + "/api/stream",
                                         headers={"Last-Event-ID": "1"})  # fmt: skip
            with urllib.request.urlopen(req, timeout=10) as r:
                assert "event: reset" in _sse_until(r, "event: reset")
        finally:
            server.stop()
    finally:
        dash.stop()


def _sse_until(resp: Any, needle: str, timeout: float = 10) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = resp.readline().decode().rstrip("\n")
        lines.append(line)
        if line.startswith(needle):
            lines += [resp.readline().decode().rstrip("\n")]
            return lines
    raise AssertionError(f"{needle!r} not in {lines}")


def test_off_loopback_reads_need_the_token(fleet_db: Any) -> None:
    dash = Dashboard(fleet_db[0], "tok", loopback=False, interval=0.5)
    try:
        with TestClient(Starlette(routes=dash.routes())) as c:
            for path in ("/api/sites", "/metrics", "/api/stream", "/api/training/runs"):
                assert c.get(path).status_code == 401, path
            assert c.get("/fleet").status_code == 401
            ok = c.get("/api/sites", headers={"Authorization": "Bearer tok"})
            assert ok.status_code == 200
            c.get("/fleet?token=wrong", follow_redirects=False)
            assert c.get("/api/sites").status_code == 401
            r = c.get("/fleet?token=tok", follow_redirects=False)
            assert r.status_code in (302, 303, 307) and "token" not in r.headers["location"]
            assert c.get("/api/sites").status_code == 200  # the cookie it set
    finally:
        dash.stop()


def test_make_app_refuses_non_loopback_without_token() -> None:
    from coordinator.api.app import make_app

    with pytest.raises(ValueError, match="without a token"):
        make_app(object(), "", loopback=False)  # type: ignore[arg-type]


# -- against a real fedmq serve ---------------------------------------------------------


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Coordinator]:
    broker = Broker(tmp_path)
    broker.start()
    coord = Coordinator(tmp_path / "c.db", broker.port, f"t-{uuid.uuid4().hex[:8]}/fedmq/v1")
    try:
        yield coord.start().wait_ready(60)
    finally:
        coord.kill()
        broker.kill()


def _url(db: Path) -> str:
    def announced() -> str | None:
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            row = conn.execute("SELECT value FROM meta WHERE key = 'api_url'").fetchone()
            conn.close()
            return None if row is None else str(row[0])
        except sqlite3.Error:
            return None

    return str(wait_until(announced, 30, "api_url announced"))


def _call(url: str, method: str, body: Any = None, token: str | None = None) -> int:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


STATE_CHANGING = (
    ("POST", "/api/runs", {"spec": {"task": "toy", "rounds": 1}}),
    ("POST", "/api/runs/r-nope/resume", None),
    ("POST", "/api/runs/r-nope/cancel", None),
    ("POST", "/api/alarms/1/ack", {"by": "mallory"}),
    ("POST", "/api/deployments", {"model": "v1", "sites": ["s1"]}),
)


def _snapshot(db: Path) -> Any:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out: dict[str, Any] = {}
        for table in ("runs", "rounds", "train_jobs", "models", "sites", "site_events", "alarms",
                      "deployments", "site_deployments"):  # fmt: skip
            try:
                out[table] = conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            except sqlite3.OperationalError:
                out[table] = None
        return out
    finally:
        conn.close()


def test_state_changing_endpoints_need_the_token_and_change_nothing(serve: Coordinator) -> None:
    url = _url(serve.db)
    conn = sqlite3.connect(serve.db, timeout=30)
    with conn:  # alarm 1, so an acknowledgement would have something to change
        conn.execute(
            "INSERT INTO alarms (id, site, device, alarm_id, state, severity, rule, value, "
            "model_version, since, ts, updated_at) VALUES "
            "(1, 'plant-a', 'engine-7', 'rul_low', 'active', 'critical', 'rul < 30', 12.0, "
            "'r-1:5', 1, 1, 1)"
        )
    conn.close()
    before = _snapshot(serve.db)
    # Every route the app has that accepts a method other than GET/HEAD changes state.
    for method, path, body in STATE_CHANGING:
        for token in (None, "wrong-token"):
            status = _call(url + path, method, body, token)
            assert status in (401, 403), (method, path, token, status)
    # Reads stay open on loopback; the dashboard answers.
    assert _call(url + "/api/sites", "GET") == 200
    assert _call(url + "/fleet", "GET") == 200
    after = _snapshot(serve.db)
    for table in ("runs", "train_jobs", "alarms", "site_events", "deployments"):
        assert after[table] == before[table], table
    # The dashboard's cookie (set by a page visit with ?token=) counts only with the right
    # token and a JSON body (a cross-site form cannot send one).
    from coordinator.api.token import read_token, token_path

    token = read_token(token_path(serve.db))
    assert token
    ack = url + "/api/alarms/1/ack"
    for cookie, ctype in (
        (f"fedmq_token={token}", "text/plain"),
        ("fedmq_token=x", "application/json"),
    ):
        req = urllib.request.Request(ack, data=b'{"by": "eve"}', method="POST")
        req.add_header("Content-Type", ctype)
        req.add_header("Cookie", cookie)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        assert refused.value.code == 401
    assert _snapshot(serve.db)["alarms"] == before["alarms"]
    # With the token: recorded (who and when), and an unknown alarm is a 404.
    assert _call(url + "/api/alarms/99/ack", "POST", {"by": "ops"}, token) == 404
    assert _call(url + "/api/alarms/1/ack", "POST", {"by": "ops"}, token) == 200
    row = sqlite3.connect(f"file:{serve.db}?mode=ro", uri=True).execute(
        "SELECT acked_by, acked_at FROM alarms WHERE id = 1").fetchone()  # fmt: skip
    assert row[0] == "ops" and row[1] > 1_700_000_000_000
    # The refusal list covers every state-changing route of the real app.
    from coordinator.api.app import make_app

    class _Svc:
        settings = None

    app = make_app(_Svc(), "t", loopback=True)  # type: ignore[arg-type]
    changing = {
        (m, getattr(r, "path", "")) for r in app.routes for m in (getattr(r, "methods", None) or ())
        if m not in ("GET", "HEAD")
    }  # fmt: skip
    listed = {
        (m, p.replace("r-nope", "{run_id}").replace("/alarms/1/", "/alarms/{alarm}/"))
        for m, p, _ in STATE_CHANGING
    }
    assert changing == listed, changing ^ listed


def test_serve_stops_promptly_with_a_stream_open(serve: Coordinator) -> None:
    url = _url(serve.db)
    resp = urllib.request.urlopen(url + "/api/stream", timeout=10)
    assert resp.readline().startswith(b"retry:")
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(resp.read()), daemon=True)
    reader.start()
    t = time.monotonic()
    assert serve.stop(timeout=30) == 0
    assert time.monotonic() - t < 15
    reader.join(10)
    resp.close()


def test_demo_prints_the_dashboard_url(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from coordinator.demo.session import DemoSession

    db = tmp_path / "fedmq.db"
    synthetic_fleet(db, 1)
    session = DemoSession.__new__(DemoSession)
    session.layout = SimpleNamespace(db=db)  # type: ignore[assignment]
    assert session.dashboard_url() is None  # serve announced nothing yet
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO meta VALUES ('api_url', 'http://127.0.0.1:4711')")
    conn.commit()
    conn.close()
    lines: list[str] = []
    session.console = SimpleNamespace(line=lines.append)  # type: ignore[assignment]
    session._print_dashboard()
    assert lines and lines[0].startswith("dashboard       http://127.0.0.1:4711/fleet")


def test_package_data_ships_every_static_file() -> None:
    """pyproject's package-data globs for coordinator.web cover every page asset and
    vendored file (a wheel built from this tree holds them all)."""
    import fnmatch

    import tomllib

    repo = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["coordinator.web"]
    web = STATIC.parent
    files = [p.relative_to(web).as_posix() for p in STATIC.rglob("*") if p.is_file()]
    assert len(files) > 20
    missed = [
        f for f in files
        if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)
    ]  # fmt: skip
    assert not missed, missed
