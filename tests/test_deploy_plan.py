"""What a deploy request means before anything is sent (coordinator/deployment/plan.py), on a
real SQLite file: request validation, the model and its code hash, which sites may take
it and why not, and which version a rollback returns to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coordinator.deployment.plan import (
    DeployError,
    DeployRequest,
    check_sites,
    previous_version,
    resolve_model,
)
from coordinator.store import DeploymentRow, SiteDeploymentRow, SiteRecord, SqliteStore, read
from schemas import Registration, TaskOffer, encode
from tests.helpers.deploy_site import put_model

HASH, OTHER = "a" * 64, "b" * 64


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ({"sites": ["a"]}, "model is required"),
        ({"model": "v1"}, "name the sites, or all"),
        ({"model": "v1", "sites": ["a"], "all": True}, "name the sites, or all"),
        ({"model": "v1", "rollback": True, "sites": ["a"]}, "give no model"),
        ({"model": "v1", "sites": "a"}, "sites: a list of strings"),
        ({"model": "v1", "sites": ["a"], "cadence_s": 0}, "between 0.1 and 86400"),
        ({"model": "v1", "sites": ["a"], "cadence_s": "5"}, "seconds between scores"),
        ({"model": "v1", "sites": ["a"], "expires_s": 0}, "expires_s"),
        ({"model": "v1", "sites": ["a"], "rules": [1]}, "rules: a list of strings"),
        ({"model": "v1", "sites": ["a"], "colour": "red"}, "unknown field(s) colour"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(body: Any, message: str) -> None:
    with pytest.raises(DeployError, match=message.replace("(", r"\(").replace(")", r"\)")) as exc:
        DeployRequest.from_json(body)
    assert exc.value.code == "usage"


def test_a_request_keeps_unset_settings_unset() -> None:
    req = DeployRequest.from_json({"rollback": True, "all": True})
    assert (req.model, req.all_sites, req.cadence_s, req.rules, req.devices) == (
        None, True, None, None, None,
    )  # fmt: skip
    req = DeployRequest.from_json({"model": "v1", "sites": [" a ", "b", ""], "rules": ["x"]})
    assert req.sites == ("a", "b") and req.rules == ("x",) and req.expires_s == 600.0


def _fleet(db: Path) -> None:
    put_model(db, "v1", "toy", HASH, b"weights")
    store = SqliteStore(db)

    def reg(site: str, tasks: dict[str, str]) -> str:
        offers = tuple(TaskOffer(name=n, code_hash=h) for n, h in tasks.items())
        return encode(Registration(site=site, session=1, tasks=offers)).decode()

    # scorer has no dataset: it advertises the task in deploy_tasks only.
    scorer = Registration(
        site="scorer", session=1, deploy_tasks=(TaskOffer(name="toy", code_hash=HASH),)
    )
    store.save_sites(
        [
            SiteRecord("ok", reg("ok", {"toy": HASH})),
            SiteRecord("old", reg("old", {"toy": OTHER})),
            SiteRecord("other", reg("other", {"rul": HASH})),
            SiteRecord("gone", None),
            SiteRecord("scorer", encode(scorer).decode()),
        ]
    )
    store.commit()
    store.close()


def test_the_model_and_the_sites_that_may_take_it(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    _fleet(db)
    conn = read.open_db(db)
    try:
        model = resolve_model(conn, "v1")
        assert (model.task, model.code_hash, model.weights) == ("toy", HASH, b"weights")
        with pytest.raises(DeployError, match="unknown model v9") as exc:
            resolve_model(conn, "v9")
        assert exc.value.code == "not_found"
        names = ("ok", "old", "other", "gone", "nope", "scorer")
        ok, bad = check_sites(conn, names, False, "toy", HASH)
        assert ok == ["ok", "scorer"]
        why = {o.site: (o.outcome, o.reason) for o in bad}
        assert why["old"] == ("refused", "site old advertises toy with code hash bbbbbbbbbbbb, "
                              "not aaaaaaaaaaaa (the model's run): update the site's task code, "
                              "or deploy a model trained with it")  # fmt: skip
        assert why["other"][1] == "site other does not offer task toy (it offers: rul)"
        assert why["gone"][1].startswith("site gone is deregistered")
        assert why["nope"][1].startswith("unknown site nope")
        # All sites: only the registered ones are considered; the others are skipped.
        ok, bad = check_sites(conn, (), True, "toy", HASH)
        assert ok == ["ok", "scorer"] and {o.site: o.outcome for o in bad} == {
            "old": "skipped", "other": "skipped",
        }  # fmt: skip
    finally:
        conn.close()


def _activate(
    store: Any, dep: str, version: str, at: int, state: str = "active", previous: str = ""
) -> None:
    if not store.deployments(dep):
        row = DeploymentRow(dep, at, version, "toy", HASH, float(at), (f"r{at}",), (), False, "")
        store.add_deployment(row, [])
    activated = at if state in ("active", "replaced") else None
    site = SiteDeploymentRow("a", dep, version, "toy", state, "", at, previous, at, activated)
    store.save_site_deployments([site._replace(epoch="e", seq=at)])
    store.commit()


def test_rollback_goes_to_the_version_active_before_the_current_one(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    with pytest.raises(DeployError, match="no active deployment to roll back"):
        previous_version(store, "a")
    _activate(store, "d1", "v1", 100)
    with pytest.raises(DeployError, match=r"no previous version to roll back to \(only v1"):
        previous_version(store, "a")
    _activate(store, "d1", "v1", 100, state="replaced")
    _activate(store, "d2", "v2", 200)
    now, version, dep = previous_version(store, "a")
    assert (now.deployment_id, version) == ("d2", "v1")
    assert dep is not None
    assert (dep.deployment_id, dep.cadence_s, dep.rules) == ("d1", 100.0, ("r100",))
    # A redeploy of v2 (other rules) is still v2: the previous version stays v1; a
    # rejected deployment never ran, so it is not a version to return to.
    _activate(store, "d2", "v2", 200, state="replaced")
    _activate(store, "d3", "v2", 300)
    _activate(store, "d4", "v3", 400, state="rejected")
    assert previous_version(store, "a")[1] == "v1"
    # Back at v1 (the rollback), the version before it is v2.
    _activate(store, "d3", "v2", 300, state="replaced")
    _activate(store, "d5", "v1", 500)
    assert previous_version(store, "a")[1:] == ("v2", store.deployments("d3")[0])
    store.close()


def test_rollback_uses_the_sites_report_when_the_history_is_shorter(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    _activate(store, "d7", "v7", 100, previous="v6")  # v6 ran before this database knew
    now, version, dep = previous_version(store, "a")
    assert (now.deployment_id, version, dep) == ("d7", "v6", None)
    store.close()
