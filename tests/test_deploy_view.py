"""``fedmq deployments`` on a real SQLite file: the active version per site and since when,
the latest deployment's state and reason (an expired command that was never answered
says so), --site, --all-history and --json."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from coordinator.cli.deploy import deployments
from coordinator.store import DeploymentRow, SiteDeploymentRow, SiteRecord, SqliteStore
from coordinator.store.deployments import EXPIRY_GRACE_MS, deployment_view
from coordinator.store.read import open_db

HASH = "c" * 64


def _db(tmp: Path) -> Path:
    db = tmp / "c.db"
    store = SqliteStore(db)
    store.save_sites([SiteRecord("a"), SiteRecord("b")])
    for dep, version, at, expires in (("d1", "v1", 100, 10_000), ("d2", "v2", 200, 10_000),
                                      ("d3", "v3", 300, 5_000)):  # fmt: skip
        row = DeploymentRow(dep, at, version, "toy", HASH, 5.0, ("rul < 30",), (), False, "t",
                            expires)  # fmt: skip
        store.add_deployment(row, [])
    store.save_site_deployments(
        [
            SiteDeploymentRow("a", "d1", "v1", "toy", "replaced", "d2", 210, "", 210, 110, "e", 3),
            SiteDeploymentRow("a", "d2", "v2", "toy", "active", "", 205, "v1", 206, 205, "e", 2),
            # v3 sent to a and b: a rejected it, b never answered and the command expired.
            SiteDeploymentRow("a", "d3", "v3", "toy", "rejected", "rule x", 305, "", 306, None),
            SiteDeploymentRow("b", "d3", "v3", "toy", "sent", "", 300, "", 300),
        ]
    )  # fmt: skip
    store.commit()
    store.close()
    return db


def test_the_view_per_site_and_its_history(tmp_path: Path) -> None:
    db = _db(tmp_path)
    conn = open_db(db)
    try:
        rows = {r["site"]: r for r in deployment_view(conn, now=5_000 + EXPIRY_GRACE_MS + 1)}
        assert rows["a"]["active"]["model_version"] == "v2"
        assert rows["a"]["active"]["activated_at"] == 205
        assert (rows["a"]["latest"]["deployment_id"], rows["a"]["latest"]["state"]) == (
            "d3", "rejected",
        )  # fmt: skip
        assert rows["b"]["active"] is None and rows["b"]["latest"]["expired"] is True
        # Until its expiry and the site's skew allowance, it may still be taken.
        early = {r["site"]: r for r in deployment_view(conn, now=5_000 + EXPIRY_GRACE_MS)}
        assert early["b"]["latest"]["expired"] is False
        history = deployment_view(conn, "a", all_history=True)
        assert [(h["deployment_id"], h["state"]) for h in history] == [
            ("d1", "replaced"), ("d2", "active"), ("d3", "rejected"),
        ]  # fmt: skip
        assert deployment_view(conn, deployment_id="d3")[1]["site"] == "b"
    finally:
        conn.close()


def test_the_command_shows_what_runs_where(tmp_path: Path) -> None:
    db = _db(tmp_path)
    run = CliRunner().invoke(deployments, ["--db", str(db)])
    assert run.exit_code == 0, run.output
    lines = {line.split()[0]: line for line in run.output.splitlines()[1:]}
    assert "v2" in lines["a"] and "5 s" in lines["a"] and "rul < 30" in lines["a"]
    assert "v3 rejected" in lines["a"] and "rule x" in lines["a"]
    assert lines["b"].split()[1] == "none" and "command expired, no answer" in lines["b"]
    run = CliRunner().invoke(deployments, ["--db", str(db), "--site", "b", "--json"])
    (only,) = json.loads(run.output)
    assert only["site"] == "b" and only["latest"]["state"] == "sent"
    run = CliRunner().invoke(deployments, ["--db", str(db), "--all-history"])
    assert len(run.output.splitlines()) == 1 + 4
    run = CliRunner().invoke(deployments, ["--db", str(tmp_path / "none.db")])
    assert run.exit_code == 3 and "fedmq serve --db" in run.output
