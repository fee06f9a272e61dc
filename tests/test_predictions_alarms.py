"""Predictions and alarms (issue 14's wire contract and the coordinator's side) against a
real Mosquitto and a real ``fedmq serve``; the site is played at the protocol level by an
MQTT client publishing valid (and hostile) messages through the broker.

Deployment and scoring at a site are not built yet: these messages are what a scoring
site will publish.
"""

from __future__ import annotations

import getpass
import json
import sqlite3
from pathlib import Path
from typing import Any, Literal

from schemas import Ack, Alarm, Prediction, PredictionOutput, Registration, Topics, encode
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import Coordinator, fedmq, wait_until
from tests.helpers.mqtt import TestClient

SITE = "plant-a"
T0 = 1_790_000_000_000


def _prediction(seq: int, rul: float, device: str = "engine-7", **kw: Any) -> Prediction:
    return Prediction(
        site=SITE, session=1, seq=seq, ts=T0 + seq, device=device, model_version="r-1:5",
        task="cmapss_rul", window_end=T0 + 60_000 * seq,
        outputs={"rul": PredictionOutput(value=rul, unit="cycles"),
                 "p_fail": PredictionOutput(value=0.1 * seq)},
        **kw,
    )  # fmt: skip


def _alarm(
    state: Literal["active", "cleared"], ts: int, value: float, device: str = "engine-7"
) -> Alarm:
    return Alarm(
        site=SITE, session=1, seq=3, ts=ts, device=device, alarm_id="rul_low", state=state,
        severity="critical", rule="rul < 30", value=value, model_version="r-1:5", since=ts,
    )  # fmt: skip


def _json(*args: str) -> Any:
    return json.loads(fedmq(*args, "--json").stdout)


def _events(db: Path, prefix: str = "alarm_") -> list[tuple[str, str | None, str | None]]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        rows = conn.execute(
            "SELECT event, state_from, state_to FROM site_events WHERE event LIKE ? ORDER BY id",
            (prefix + "%",),
        ).fetchall()
    finally:
        conn.close()
    return [tuple(r) for r in rows]


def _acked(acks: TestClient, seq: int) -> None:
    acks.expect(
        lambda m: (
            Ack.model_validate_json(m.payload).site == SITE
            and Ack.model_validate_json(m.payload).acked >= seq
        ),
        timeout=30,
    )


def test_predictions_are_stored_once_and_alarms_keep_their_state(
    own_broker: Broker, prefix: str, tmp_path: Path
) -> None:
    db, t = tmp_path / "c.db", Topics(prefix)
    site = TestClient(own_broker.port).connect()
    acks = TestClient(own_broker.port).connect().subscribe(t.ack(SITE))
    site.publish(t.registration(SITE), encode(Registration(site=SITE, session=1)), retain=True)
    coord = Coordinator(db, own_broker.port, prefix).start()
    try:
        coord.wait_ready()
        # Seq 1 and 2, then 2 again (a replay, e.g. a redelivery): stored once, acked.
        for seq, rul in ((1, 80.0), (2, 60.0), (2, 60.0)):
            site.publish(t.prediction(SITE, "engine-7"), encode(_prediction(seq, rul)))
        _acked(acks, 2)
        rows = _json("predictions", SITE, "--db", str(db))
        assert [(r["seq"], r["outputs"]["rul"]) for r in rows] == [
            (1, {"value": 80.0, "unit": "cycles"}),
            (2, {"value": 60.0, "unit": "cycles"}),
        ]
        assert rows[0]["model_version"] == "r-1:5" and rows[0]["window_end"] == T0 + 60_000
        # An alarm raised, retained on the broker.
        site.publish(
            t.alarm(SITE, "engine-7"), encode(_alarm("active", T0 + 10, 24.0)), retain=True
        )
        wait_until(lambda: _json("alarms", "--db", str(db), "--active"), 30, "an active alarm")
        assert _events(db) == [("alarm_active", "cleared", "active")]
        assert coord.stop() == 0

        # While serve is down the site replays seq 2 (from its outbox) and adds seq 3.
        site.publish(t.prediction(SITE, "engine-7"), encode(_prediction(2, 60.0, historical=True)))
        site.publish(t.prediction(SITE, "engine-7"), encode(_prediction(3, 28.0)))
        coord = Coordinator(db, own_broker.port, prefix).start()
        coord.wait_ready()
        _acked(acks, 3)
        wait_until(
            lambda: len(_json("predictions", SITE, "--db", str(db))) == 3, 30, "3 predictions"
        )
        # Across the restart: each seq once, the alarm still active, no second event.
        rows = _json("predictions", SITE, "--db", str(db))
        assert [r["seq"] for r in rows] == [1, 2, 3]
        newest = _json("predictions", SITE, "--db", str(db), "--limit", "1", "--since", "1d")
        assert newest == []  # windows of 2026-09: none within the last day of the clock
        since = str(T0 + 60_000 * 2)
        assert [
            r["seq"] for r in _json("predictions", SITE, "--db", str(db), "--since", since)
        ] == [2, 3]
        assert _json("predictions", SITE, "--db", str(db), "--device", "other") == []
        csv_out = fedmq("predictions", SITE, "--db", str(db), "--csv").stdout.splitlines()
        assert csv_out[0].startswith("window_end,device,model_version,task,output,value,unit")
        assert len(csv_out) == 1 + 3 * 2  # one row per output
        [active] = _json("alarms", "--db", str(db), "--active")
        assert (active["site"], active["device"], active["alarm_id"]) == (
            SITE,
            "engine-7",
            "rul_low",
        )
        assert (active["severity"], active["rule"], active["value"]) == (
            "critical",
            "rul < 30",
            24.0,
        )
        assert _events(db) == [("alarm_active", "cleared", "active")]

        # Acknowledged: who and when.
        out = fedmq("alarms", "ack", str(active["id"]), "--db", str(db), "--by", "alice").stdout
        assert "acknowledged by alice" in out
        [acked] = _json("alarms", "--db", str(db))
        assert acked["acked_by"] == "alice" and acked["acked_at"] > 0
        # The group's --db counts for ack too.
        fedmq("alarms", "--db", str(db), "ack", str(active["id"]), "--by", "bob")
        assert _json("alarms", "--db", str(db))[0]["acked_by"] == "bob"
        missing = fedmq("alarms", "ack", "999", "--db", str(db), check=False)
        assert missing.returncode == 3 and "no alarm 999" in missing.stderr

        # Cleared: no longer active, one more event; the acknowledgement stays.
        site.publish(
            t.alarm(SITE, "engine-7"), encode(_alarm("cleared", T0 + 20, 41.0)), retain=True
        )
        wait_until(lambda: not _json("alarms", "--db", str(db), "--active"), 30, "alarm cleared")
        [cleared] = _json("alarms", "--db", str(db))
        assert cleared["state"] == "cleared" and cleared["acked_by"] == "bob"
        # A late message older than the state held changes nothing (seen once the
        # prediction published after it is acked: the writer keeps their order).
        site.publish(t.alarm(SITE, "engine-7"), encode(_alarm("active", T0 + 15, 25.0)))
        site.publish(t.prediction(SITE, "engine-7"), encode(_prediction(4, 40.0)))
        _acked(acks, 4)
        assert _json("alarms", "--db", str(db), "--active") == []
        # Active again: a new transition, a fresh acknowledgement is needed (default: OS user).
        site.publish(
            t.alarm(SITE, "engine-7"), encode(_alarm("active", T0 + 30, 22.0)), retain=True
        )
        wait_until(lambda: _json("alarms", "--db", str(db), "--active"), 30, "active again")
        assert _json("alarms", "--db", str(db))[0]["acked_by"] is None
        fedmq("alarms", "ack", str(active["id"]), "--db", str(db))
        assert _json("alarms", "--db", str(db))[0]["acked_by"] == getpass.getuser()
        # The site clears its retained alarm topic (an empty retained payload).
        site.publish(t.alarm(SITE, "engine-7"), b"", retain=True)
        wait_until(lambda: not _json("alarms", "--db", str(db), "--active"), 30, "topic cleared")
        # One event per transition (and per acknowledgement), in order.
        assert _events(db) == [
            ("alarm_active", "cleared", "active"),
            ("alarm_acked", "active", "active"),
            ("alarm_acked", "active", "active"),
            ("alarm_cleared", "active", "cleared"),
            ("alarm_active", "cleared", "active"),
            ("alarm_acked", "active", "active"),
            ("alarm_cleared", "active", "cleared"),
        ]
        assert coord.alive()
    finally:
        coord.stop()
        site.close()
        acks.close()


def test_a_retained_alarm_is_read_by_a_new_coordinator(
    own_broker: Broker, prefix: str, tmp_path: Path
) -> None:
    t = Topics(prefix)
    site = TestClient(own_broker.port).connect()
    site.publish(
        t.alarm(SITE, "engine-9"), encode(_alarm("active", T0, 12.0, "engine-9")), retain=True
    )
    site.close()
    db = tmp_path / "fresh.db"  # a coordinator that never saw the alarm being raised
    coord = Coordinator(db, own_broker.port, prefix).start()
    try:
        coord.wait_ready()
        wait_until(lambda: _json("alarms", "--db", str(db), "--active"), 30, "the retained alarm")
        [alarm] = _json("alarms", "--db", str(db), "--active")
        assert (alarm["device"], alarm["value"], alarm["since"]) == ("engine-9", 12.0, T0)
        assert _events(db) == [("alarm_active", "cleared", "active")]
    finally:
        coord.stop()


def test_hostile_predictions_and_alarms_are_dead_letters(
    own_broker: Broker, prefix: str, tmp_path: Path
) -> None:
    db, t = tmp_path / "c.db", Topics(prefix)
    site = TestClient(own_broker.port).connect()
    acks = TestClient(own_broker.port).connect().subscribe(t.ack(SITE))
    coord = Coordinator(db, own_broker.port, prefix).start()
    try:
        coord.wait_ready()
        body = _prediction(1, 50.0).model_dump(mode="json")
        many = {**body, "outputs": {f"o{i}": {"value": 1.0} for i in range(10_000)}}
        site.publish(t.prediction(SITE, "engine-7"), json.dumps(many).encode())
        nan = json.dumps(body).replace("50.0", "NaN").encode()
        site.publish(t.prediction(SITE, "engine-7"), nan)
        # An alarm of plant-a on plant-b's topic; a retained prediction.
        other = encode(_alarm("active", T0, 1.0))
        site.publish(t.alarm("plant-b", "engine-7"), other, retain=True)
        site.publish(t.prediction(SITE, "engine-7"), encode(_prediction(5, 9.0)), retain=True)

        def dead() -> list[dict[str, Any]]:
            return _json("dead-letters", "--db", str(db))  # type: ignore[no-any-return]

        wait_until(lambda: len(dead()) >= 4, 30, "4 dead letters")
        assert any(
            d["topic"] == t.alarm("plant-b", "engine-7")
            and d["reason"] == "site_mismatch"
            and d["detail"] == "payload site 'plant-a' != topic site 'plant-b'"
            for d in dead()
        )
        details = " ".join(d["detail"] for d in dead())
        assert "outputs" in details and "64 items" in details
        assert sum(1 for d in dead() if d["reason"] == "invalid") >= 2  # 10,000 outputs; NaN
        assert any(d["reason"] == "retained_durable" for d in dead())
        # Serve keeps running and stores the honest prediction.
        site.publish(t.prediction(SITE, "engine-7"), encode(_prediction(1, 50.0)))
        _acked(acks, 1)
        assert [r["seq"] for r in _json("predictions", SITE, "--db", str(db))] == [1]
        assert _json("alarms", "--db", str(db)) == []
        assert coord.alive()
    finally:
        coord.stop()
        site.close()
        acks.close()


def test_help_teaches_with_examples() -> None:
    for args in (("predictions",), ("alarms",), ("alarms", "ack")):
        out = fedmq(*args, "--help").stdout
        assert "Example:" in out and "fedmq " + args[0] in out, args
    assert "--active" in fedmq("alarms", "--help").stdout
    assert "--by" in fedmq("alarms", "ack", "--help").stdout
    bad = fedmq("predictions", "plant-a", "--json", "--csv", check=False)
    assert bad.returncode == 2 and "one of --csv and --json" in bad.stderr
