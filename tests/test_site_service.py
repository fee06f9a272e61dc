"""``fedmq-site service``: systemd units for a site and for ``fedmq serve`` (issue 17, 4)."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from fedmq_runtime.cli import UsageError
from site_node.cli import service as svc
from tests.helpers.site_proc import SITE_BIN

SERIAL_SITE = """\
site_id = "press-1"
[[devices]]
name = "press"
source = "serial"
port = "/dev/ttyUSB0"
columns = [{name = "temp", unit = "C"}]
"""


def fedmq_site(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SITE_BIN), *args], capture_output=True, text=True, timeout=60)


def directives(unit: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def site_config(tmp_path: Path, text: str = SERIAL_SITE, name: str = "site.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_site_unit_text(tmp_path: Path) -> None:
    config = site_config(tmp_path)
    out = fedmq_site("service", "--config", str(config))
    assert out.returncode == 0, out.stderr
    d = directives(out.stdout)
    assert d["ExecStart"] == [
        f"{SITE_BIN.absolute()} run --config {config} --data-dir /var/lib/fedmq-site"
    ]
    assert (d["User"], d["Group"]) == (["fedmq"], ["fedmq"])
    assert d["Restart"] == ["on-failure"] and d["RestartSec"] == ["5s"]
    assert d["RestartPreventExitStatus"] == ["2"]  # a config error is not retried
    assert d["StateDirectory"] == ["fedmq-site"]
    assert d["ReadWritePaths"] == ["/var/lib/fedmq-site"]
    assert d["WorkingDirectory"] == [str(tmp_path)]
    assert d["WantedBy"] == ["multi-user.target"]
    # Serial ports: the dialout group and device nodes stay reachable.
    assert d["SupplementaryGroups"] == ["dialout"] and d["PrivateDevices"] == ["no"]
    assert "ProtectClock" not in d
    assert d["ProtectSystem"] == ["strict"] and d["NoNewPrivileges"] == ["yes"]
    assert d["CapabilityBoundingSet"] == [""]
    assert d["PrivateTmp"] == ["no"]  # the config lives under /tmp here
    assert "relative" in out.stdout.splitlines()[1]


def test_site_unit_with_absolute_data_dir_and_no_serial(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = site_config(
        tmp_path, f'site_id = "host-1"\ndata_dir = "{data}"\n[log]\nfile = "logs/site.log"\n'
    )
    d = directives(fedmq_site("service", "-c", str(config), "--name", "site-b").stdout)
    assert d["ExecStart"] == [f"{SITE_BIN.absolute()} run --config {config}"]
    assert "StateDirectory" not in d
    assert d["ReadWritePaths"] == [f"{data} {tmp_path / 'logs'}"]
    assert d["PrivateDevices"] == ["yes"] and d["ProtectClock"] == ["yes"]
    assert "SupplementaryGroups" not in d


def test_coordinator_unit_text() -> None:
    out = fedmq_site("service", "--coordinator", "--user", "fedmq-coord")
    assert out.returncode == 0, out.stderr
    d = directives(out.stdout)
    fedmq = SITE_BIN.parent / "fedmq"
    assert d["ExecStart"] == [f"{fedmq} serve --db /var/lib/fedmq-coordinator/fedmq.db"]
    assert d["StateDirectory"] == ["fedmq-coordinator"] and d["User"] == ["fedmq-coord"]
    assert d["Description"] == ["fedmq coordinator (fedmq serve)"]
    assert d["TimeoutStopSec"] == ["60"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "pass --config"),
        (("--name", "bad name"), "a unit name is"),
    ],
)
def test_usage_errors(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    extra = ("--config", str(site_config(tmp_path))) if args else ()
    out = fedmq_site("service", *extra, *args)
    assert out.returncode == 2 and message in out.stderr


def test_an_invalid_config_is_refused_before_a_unit_is_written(tmp_path: Path) -> None:
    config = site_config(tmp_path, 'site_id = "Not Valid"\n')
    out = fedmq_site("service", "--config", str(config))
    assert out.returncode == 2 and str(config) in out.stderr and out.stdout == ""


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed: unit text checked by the other tests")
    odd = tmp_path / "plant 50% line"  # quoting: a space and a % in the path
    config = site_config(odd, SERIAL_SITE)
    units = {
        "fedmq-site.service": fedmq_site(
            "service", "--config", str(config), "--data-dir", str(odd / "data dir")
        ).stdout,
        "fedmq-coordinator.service": fedmq_site("service", "--coordinator").stdout,
    }
    for name, text in units.items():
        path = tmp_path / name
        path.write_text(text)
        out = _verify(path)
        # verify exits 0 on unknown keys and only warns: any word about our unit fails.
        assert out.returncode == 0 and name not in out.stderr, out.stderr
    # The test can fail: a broken directive is reported.
    bad = tmp_path / "broken.service"
    bad.write_text(units["fedmq-site.service"].replace("Restart=on-failure", "Restart=often"))
    assert "broken.service" in _verify(bad).stderr
    d = directives(units["fedmq-site.service"])
    assert f"'{str(config).replace('%', '%%')}'" in d["ExecStart"][0]
    assert d["WorkingDirectory"] == [str(odd).replace("%", "%%")]
    assert d["ReadWritePaths"] == [f'"{odd / "data dir"}"'.replace("%", "%%")]


def test_install_refuses_without_root_and_on_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = svc.coordinator_unit(None, tmp_path / "c.db", "fedmq", "fedmq-coordinator", None)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(UsageError, match="run it as root"):
        svc.install_unit(spec, tmp_path / "units")
    monkeypatch.delattr(os, "geteuid")
    with pytest.raises(UsageError, match=r"docs/windows\.md"):
        svc.install_unit(spec, tmp_path / "units")
    assert not (tmp_path / "units").exists()


def test_install_writes_the_unit_and_owns_the_data_dir(tmp_path: Path) -> None:
    units, data = tmp_path / "units", tmp_path / "var" / "site-data"
    args = ["service", "-c", str(site_config(tmp_path)), "--user", "nobody"]
    args += ["--data-dir", str(data), "--install", "--unit-dir", str(units)]
    out = fedmq_site(*args)
    if os.geteuid() != 0:
        # Not root: the real command refuses with the reason, and writes nothing.
        assert out.returncode == 2 and "run it as root" in out.stderr
        assert not units.exists()
        return
    assert out.returncode == 0, out.stderr
    unit = units / "fedmq-site.service"
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    d = directives(unit.read_text())
    assert d["User"] == ["nobody"] and d["ReadWritePaths"] == [str(data)]
    assert data.stat().st_uid == pwd.getpwnam("nobody").pw_uid
    assert "systemctl enable --now fedmq-site.service" in out.stdout


def test_units_sandbox_exposure_is_ok(tmp_path: Path) -> None:
    """systemd-analyze security --offline: both units at most 5.0 of 10 ("OK"; a unit
    without sandboxing is ~9.6, "UNSAFE")."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed: unit text checked by the other tests")
    config = site_config(tmp_path)
    units = {
        "fedmq-site.service": fedmq_site("service", "--config", str(config)).stdout,
        "fedmq-coordinator.service": fedmq_site("service", "--coordinator").stdout,
        # The check can fail: the same site unit without its sandboxing.
        "bare.service": "\n".join(
            line
            for line in fedmq_site("service", "--config", str(config)).stdout.splitlines()
            if line.split("=", 1)[0] not in {h.split("=", 1)[0] for h in svc.HARDENING}
            and not line.startswith(("Protect", "Private", "ReadWritePaths"))
        ),
    }
    for name, text in units.items():
        path = tmp_path / name
        path.write_text(text + "\n")
        out = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", "--threshold=50", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        level = re.search(r"Overall exposure level for \S+: (\d+\.\d)", out.stdout)
        assert level is not None, out.stdout + out.stderr
        if name == "bare.service":
            assert out.returncode != 0 and float(level.group(1)) > 5.0
        else:
            assert out.returncode == 0 and float(level.group(1)) <= 5.0, out.stdout[-2000:]
