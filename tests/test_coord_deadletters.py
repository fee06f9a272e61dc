"""Hostile and malformed payloads end in dead_letters with a reason; ingest goes on."""

from __future__ import annotations

import json
from pathlib import Path

from schemas import Ack, Heartbeat, Sample, TelemetryBatch, Topics, encode, now_ms
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import Coordinator, fedmq, wait_until
from tests.helpers.mqtt import TestClient


def _batch(site: str, seq: int, **extra: object) -> dict[str, object]:
    body = TelemetryBatch(
        site=site,
        session=1,
        seq=seq,
        device="dev",
        samples=(Sample(ts=now_ms(), name="t", value=1.0),),
    ).model_dump(mode="json")
    return {**body, **extra}


def test_each_hostile_payload_is_dead_lettered_and_ingest_continues(
    own_broker: Broker, prefix: str, tmp_path: Path
) -> None:
    db = tmp_path / "c.db"
    coord = Coordinator(
        db, own_broker.port, prefix, env={"FEDMQ_MQTT__MAX_PAYLOAD": "4096"}
    ).start()
    try:
        coord.wait_ready()
        t = Topics(prefix)
        tel = t.telemetry("good", "dev")
        hb = Heartbeat(site="good", session=1, interval_s=1.0).model_dump(mode="json")
        cases = [
            ("not_json", tel, b"{not json"),
            ("not_utf8", tel, bytes(range(256)) * 4),
            ("site_mismatch", tel, json.dumps(_batch("evil", 1)).encode()),  # spoofed site
            ("too_large", tel, json.dumps(_batch("good", 1, pad="x" * 5000)).encode()),
            ("not_json", tel, b"[" * 2000 + b"]" * 2000),  # deep JSON
            ("wrong_topic", tel, json.dumps(hb).encode()),  # heartbeat kind on telemetry
            ("unsupported_version", tel, json.dumps(_batch("good", 1, v="2.0")).encode()),
            ("unknown_kind", tel, json.dumps(_batch("good", 1, kind="rm -rf")).encode()),
            ("invalid", tel, json.dumps(_batch("good", 1, samples=[])).encode()),
            ("not_object", tel, b"[1, 2, 3]"),
            ("empty", tel, b""),
            ("bad_topic", f"{prefix}/site/Bad Site/telemetry/dev", b"{}"),
        ]
        acks = TestClient(own_broker.port).connect().subscribe(t.ack("good"))
        client = TestClient(own_broker.port).connect()
        for _, topic, payload in cases:
            client.publish(topic, payload)
        # A valid message after all of them is stored and acked.
        client.publish(tel, encode(TelemetryBatch.model_validate(_batch("good", 1))))
        ack = acks.expect(lambda m: Ack.model_validate_json(m.payload).acked == 1, timeout=15)
        assert ack.topic == t.ack("good")

        def dead() -> list[dict[str, object]]:
            out = fedmq("dead-letters", "--db", str(db), "--json", "--limit", "100").stdout
            return list(reversed(json.loads(out)))

        wait_until(lambda: len(dead()) == len(cases), 10, "all dead letters")
        rows = dead()
        assert [r["reason"] for r in rows] == [reason for reason, _, _ in cases]
        assert rows[2]["detail"] == "payload site 'evil' != topic site 'good'"
        assert rows[3]["size"] > 4096 and len(str(rows[3]["payload"])) <= 4 * 512
        telemetry = json.loads(fedmq("telemetry", "good", "--db", str(db), "--json").stdout)
        assert [(r["name"], r["value"], r["seq"]) for r in telemetry] == [("t", 1.0, 1)]
        assert "spoof" not in fedmq("sites", "--db", str(db)).stdout
        assert coord.alive()
        acks.close()
        client.close()
    finally:
        assert coord.stop() == 0
