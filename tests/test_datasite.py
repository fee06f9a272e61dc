"""A real PySyft 0.9.5 datasite: hosted asset, DS code request, admin approval, run."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from site_node.training.datasite import ROOT_EMAIL, Datasite, DatasiteError
from site_node.training.tasks import get_task
from tests.helpers.data import TRAIN_FD001

TRAIN = TRAIN_FD001


@pytest.mark.train
@pytest.mark.slow
def test_job_runs_as_an_approved_code_request_and_state_persists(tmp_path: Path) -> None:
    site = Datasite.open(tmp_path, "t-site")
    pw_file = tmp_path / "syft" / "root_password"
    assert stat.S_IMODE(os.stat(pw_file).st_mode) == 0o600
    assert pw_file.read_text() != "changethis"
    with pytest.raises(Exception):  # noqa: B017 - syft's own login error type
        site._handle.login(email=ROOT_EMAIL, password="changethis")

    hosted = site.host_dataset("fd001", "cmapss-rul", [TRAIN], {"units": [1, 2, 3]})
    assert hosted.rows > 0 and [d.name for d in site.list_datasets()] == ["fd001"]
    mock = site.ds.datasets["fd001"].assets[0].mock
    assert mock.shape == (hosted.rows, 26)

    task = get_task("cmapss-rul")
    start = task.initial_weights()
    site.submit_job("job-1", "cmapss-rul", start, {"epochs": 1})
    assert site.job_state("job-1") == "pending"
    with pytest.raises(DatasiteError):  # not approved yet: the DS cannot run it
        site.run("job-1")
    site.approve("job-1")
    seen: list[float] = []
    weights, n, metrics = site.run("job-1", seen.append)
    assert n > 0 and metrics["rmse"] > 0 and seen[-1] == 1.0
    # The job first scored the global model it was given (federated evaluation), then trained.
    scored = metrics.pop("__global_eval__")
    assert weights != start and set(metrics) == {"train_loss", "loss", "rmse"}
    assert isinstance(scored, dict) and scored["metrics"]["rmse"] > 0

    # The same code for another job is a distinct request; a rejected one never runs.
    site.submit_job("job-2", "cmapss-rul", start, {"epochs": 1})
    site.reject("job-2", "operator said no")
    assert site.job_state("job-2") == "rejected"
    with pytest.raises(DatasiteError):
        site.run("job-2")
    site.close()

    again = Datasite.open(tmp_path, "t-site")  # restart: same password, data still hosted
    assert [d.name for d in again.list_datasets()] == ["fd001"]
    assert again.job_state("job-1") == "approved"
    again.close()


@pytest.mark.train
@pytest.mark.slow
def test_pre_approved_slot_runs_the_job_bound_to_it_once(tmp_path: Path) -> None:
    site = Datasite.open(tmp_path, "slot-site")
    site.host_dataset("fd001", "cmapss-rul", [TRAIN], {"units": [1, 2, 3]})
    slot = site.prepare_slot("cmapss-rul")
    assert site.free_slot("cmapss-rul") == slot
    site.close()

    again = Datasite.open(tmp_path, "slot-site")  # restart: the unused slot is found again
    assert again.free_slot("cmapss-rul") == slot
    start = get_task("cmapss-rul").initial_weights()
    again.bind_slot(slot, "job-s", "cmapss-rul", start, {"epochs": 1})
    assert again.free_slot("cmapss-rul") is None
    with pytest.raises(DatasiteError, match="not free"):
        again.bind_slot(slot, "job-t", "cmapss-rul", start, {"epochs": 1})
    assert again.has_job("job-s") and again.job_state("job-s") == "approved"
    weights, n, metrics = again.run("job-s")
    assert n > 0 and metrics["rmse"] > 0 and weights != start
    again.close()


def test_an_unbound_slot_runs_nothing(tmp_path: Path) -> None:
    from site_node.training.job_body import execute_slot

    assert "no job bound" in execute_slot(str(tmp_path), data=None)["error"]
