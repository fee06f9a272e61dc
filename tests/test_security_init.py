"""`fedmq broker init` / `add-site` through the real CLI: layout, modes, secrets, errors."""

from __future__ import annotations

import ipaddress
import json
import logging
import stat
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coordinator.admin.passwords import read_password_file, verify_password
from coordinator.cli import cli
from coordinator.settings import CoordinatorSettings
from fedmq_runtime.settings import load_settings
from site_node.settings import SiteSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SITES = ["press-1", "press-2", "press-3"]
SECRET_FILES = [
    "broker/passwd",
    "broker/tls/server.key",
    "ca/ca.key",
    "coordinator/credentials.toml",
    "coordinator/signing.key",
    "coordinator/tls/client.key",
    *[f"sites/{s}/credentials.toml" for s in SITES],
    *[f"sites/{s}/tls/client.key" for s in SITES],
]


def _run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture
def sites_file(tmp_path: Path) -> Path:
    path = tmp_path / "sites.txt"
    path.write_text("# plant sites\npress-1\n\npress-2  # second line\npress-3\n")
    return path


def _init(tmp_path: Path, sites_file: Path, *extra: str) -> tuple[Path, str]:
    out = tmp_path / "deploy"
    code, output = _run(
        ["broker", "init", "--sites", str(sites_file), "--out", str(out), "--tls", *extra]
    )
    assert code == 0, output
    return out, output


_CREDENTIALS = {
    "coordinator": "coordinator/credentials.toml",
}


def _passwords(out: Path) -> dict[str, str]:
    users = [*_CREDENTIALS, *SITES]
    return {
        u: tomllib.loads((out / _CREDENTIALS.get(u, f"sites/{u}/credentials.toml")).read_text())[
            "mqtt"
        ]["password"]
        for u in users
    }


def test_init_layout_modes_and_no_secret_in_output(
    tmp_path: Path, sites_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    out, output = _init(tmp_path, sites_file, "--hosts", "broker.plant.local,10.0.0.5")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    expected = {
        "fedmq-broker.json",
        "broker/acl",
        "broker/passwd",
        "broker/tls/ca.crt",
        "broker/tls/server.crt",
        "broker/tls/server.key",
        "ca/ca.crt",
        "ca/ca.key",
        "coordinator/credentials.toml",
        "coordinator/signing.key",
        "coordinator/signing.pub",
        "coordinator/tls/ca.crt",
        "coordinator/tls/client.crt",
        "coordinator/tls/client.key",
    }
    for s in SITES:
        expected |= {
            f"sites/{s}/credentials.toml",
            f"sites/{s}/coordinator.pub",
            f"sites/{s}/tls/ca.crt",
            f"sites/{s}/tls/client.crt",
            f"sites/{s}/tls/client.key",
        }
    assert files == sorted(expected)
    for rel in SECRET_FILES:
        assert stat.S_IMODE((out / rel).stat().st_mode) == 0o600, rel
    # Every file written is printed, and no secret is printed or logged.
    printed = set(output.split())
    assert {str(out / f) for f in expected} <= printed
    secrets = list(_passwords(out).values())
    secrets += [(out / rel).read_text() for rel in SECRET_FILES if rel.endswith(".key")]
    for secret in secrets:
        assert secret.strip() not in output
        assert secret.strip() not in caplog.text
    entries = read_password_file(out / "broker/passwd")
    assert set(entries) == {"coordinator", *SITES}
    for user, password in _passwords(out).items():
        assert verify_password(entries[user], password)
    assert len(set(_passwords(out).values())) == 4


def test_credentials_are_valid_node_settings(tmp_path: Path, sites_file: Path) -> None:
    out, _ = _init(tmp_path, sites_file, "--prefix", "acme/detroit/pdm/fedmq/v1")
    site = load_settings(SiteSettings, out / "sites/press-2/credentials.toml", env={})
    assert site.site_id == "press-2"
    assert site.mqtt.username == "press-2" and site.mqtt.tls and site.mqtt.port == 8883
    assert site.mqtt.prefix == "acme/detroit/pdm/fedmq/v1"
    assert site.mqtt.ca_file and site.mqtt.ca_file.is_file()
    assert site.mqtt.cert_file and site.mqtt.cert_file.is_file()
    assert site.coordinator_public_key_file is not None
    assert (
        site.coordinator_public_key_file.read_bytes()
        == (out / "coordinator/signing.pub").read_bytes()
    )
    coord = load_settings(CoordinatorSettings, out / "coordinator/credentials.toml", env={})
    assert coord.mqtt.username == "coordinator"
    assert coord.signing_key_file == out / "coordinator/signing.key"
    acl = (out / "broker/acl").read_text()
    assert "topic readwrite acme/detroit/pdm/fedmq/v1/#" in acl
    assert "pattern read acme/detroit/pdm/fedmq/v1/site/%u/cmd/#" in acl
    assert "{prefix}" not in acl and "{coordinator}" not in acl and "{train}" not in acl
    # `fedmq train` needs no broker account (serve sends the commands): none is written.
    assert (
        "coordinator-train" not in acl and not (out / "coordinator/train-credentials.toml").exists()
    )


def test_runtime_dir_rewrites_paths(tmp_path: Path, sites_file: Path) -> None:
    out, _ = _init(tmp_path, sites_file, "--runtime-dir", "/etc/fedmq")
    creds = tomllib.loads((out / "sites/press-1/credentials.toml").read_text())
    assert creds["coordinator_public_key_file"] == "/etc/fedmq/coordinator.pub"
    assert creds["mqtt"]["ca_file"] == "/etc/fedmq/tls/ca.crt"


def test_certificates_chain_cn_and_sans(tmp_path: Path, sites_file: Path) -> None:
    out, _ = _init(tmp_path, sites_file, "--hosts", "broker.plant.local", "--hosts", "10.0.0.5")
    ca = x509.load_pem_x509_certificate((out / "ca/ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((out / "broker/tls/server.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "broker.plant.local"} <= set(sans.get_values_for_type(x509.DNSName))
    assert ipaddress.ip_address("10.0.0.5") in sans.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    for user, rel in [("coordinator", "coordinator"), *[(s, f"sites/{s}") for s in SITES]]:
        cert = x509.load_pem_x509_certificate((out / rel / "tls/client.crt").read_bytes())
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == user
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def test_invalid_site_line_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "sites.txt"
    bad.write_text("press-1\nPress.2\n")
    code, output = _run(["broker", "init", "--sites", str(bad), "--out", str(tmp_path / "o")])
    assert code == 2
    assert output.strip().splitlines() == [
        f"Error: {bad}:2: invalid site id 'Press.2': must match ^[a-z0-9][a-z0-9_-]{{0,63}}$"
    ]
    assert not (tmp_path / "o").exists()
    for content, needle in [
        ("a\na\n", ":2: duplicate"),
        ("coordinator\n", ":1: site id"),
        ("# only\n", "no site ids"),
    ]:
        bad.write_text(content)
        code, output = _run(["broker", "init", "--sites", str(bad), "--out", str(tmp_path / "o")])
        assert code == 2 and needle in output and "Traceback" not in output


def test_existing_directory_needs_force(tmp_path: Path, sites_file: Path) -> None:
    out, _ = _init(tmp_path, sites_file)
    before = _passwords(out)
    key = (out / "coordinator/signing.key").read_bytes()
    code, output = _run(["broker", "init", "--sites", str(sites_file), "--out", str(out)])
    assert code == 2 and "--force" in output
    assert _passwords(out) == before and (out / "coordinator/signing.key").read_bytes() == key
    code, _ = _run(["broker", "init", "--sites", str(sites_file), "--out", str(out), "--force"])
    assert code == 0
    after = _passwords(out)
    assert all(after[u] != before[u] for u in before)
    assert (out / "coordinator/signing.key").read_bytes() != key


def test_add_site_extends_and_keeps_others(tmp_path: Path, sites_file: Path) -> None:
    out, _ = _init(tmp_path, sites_file)
    hashes = read_password_file(out / "broker/passwd")
    code, output = _run(["broker", "add-site", "press-9", "--out", str(out), "--json"])
    assert code == 0
    written = json.loads(output)["written"]
    assert str(out / "sites/press-9/credentials.toml") in written
    new = read_password_file(out / "broker/passwd")
    assert {u: new[u] for u in hashes} == hashes
    creds = tomllib.loads((out / "sites/press-9/credentials.toml").read_text())
    assert verify_password(new["press-9"], creds["mqtt"]["password"])
    assert creds["mqtt"]["password"] not in output
    assert (out / "sites/press-9/tls/client.crt").is_file()
    assert json.loads((out / "fedmq-broker.json").read_text())["sites"][-1] == "press-9"
    code, output = _run(["broker", "add-site", "press-9", "--out", str(out)])
    assert code == 2 and "already exists" in output
    code, output = _run(["broker", "add-site", "x", "--out", str(tmp_path / "nowhere")])
    assert code == 2 and "run init first" in output


def test_help_has_examples() -> None:
    for args in (["broker"], ["broker", "init"], ["broker", "add-site"]):
        code, output = _run([*args, "--help"])
        assert code == 0 and "Example:" in output
