"""The dashboard shows deployments: the fleet's "deployed model" column and the site page
read the version active at each site (``site_deployments``), and a run's model table says
where each of its versions is active."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.testclient import TestClient

from coordinator.store import DeploymentRow, SiteDeploymentRow, SiteRecord, SqliteStore
from coordinator.web.app import Dashboard
from tests.helpers.deploy_site import put_model

HASH = "c" * 64


def test_fleet_site_and_models_show_the_active_version(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    put_model(db, "v1", "toy", HASH, b"one")
    put_model(db, "v2", "toy", HASH, b"two")
    store = SqliteStore(db)
    store.save_sites([SiteRecord(s, None, "online", 1) for s in ("a", "b", "c")])
    for dep, version in (("d1", "v1"), ("d2", "v2")):
        store.add_deployment(
            DeploymentRow(dep, 1, version, "toy", HASH, 10.0, (), (), False, "t"), []
        )
    store.save_site_deployments(
        [
            # a: v1 ran, then v2 became active (v1 replaced).
            SiteDeploymentRow("a", "d1", "v1", "toy", "replaced", "", 300, "", 300, 100, "e", 3),
            SiteDeploymentRow("a", "d2", "v2", "toy", "active", "", 250, "v1", 260, 250, "e", 2),
            # b: v1 active; c: v2 rejected, nothing active.
            SiteDeploymentRow("b", "d1", "v1", "toy", "active", "", 120, "", 130, 120, "f", 1),
            SiteDeploymentRow("c", "d2", "v2", "toy", "rejected", "no", 90, "", 95, None, "g", 1),
        ]
    )
    store.commit()
    store.close()
    dash = Dashboard(db, "tok", loopback=True, interval=0.1)
    try:
        with TestClient(Starlette(routes=dash.routes())) as c:
            sites = {s["site"]: s for s in c.get("/api/sites").json()["sites"]}
            assert {k: (v["model"], v["model_since"]) for k, v in sites.items()} == {
                "a": ("v2", 250), "b": ("v1", 120), "c": (None, None),
            }  # fmt: skip
            detail = c.get("/api/sites/a").json()
            assert detail["model"] == "v2" and detail["deployment"]["deployment_id"] == "d2"
            assert c.get("/api/sites/c").json()["model"] is None
            run = c.get("/api/training/runs/run-of-v1").json()
            assert [(m["model_id"], m["deployed_at"]) for m in run["models"]] == [("v1", ["b"])]
            run = c.get("/api/training/runs/run-of-v2").json()
            assert [(m["model_id"], m["deployed_at"]) for m in run["models"]] == [("v2", ["a"])]
    finally:
        dash.stop()
