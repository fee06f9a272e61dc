"""Generate everything a secured broker deployment needs, in one directory.

``init_broker`` writes (``add_site`` extends an existing directory)::

    DIR/fedmq-broker.json          what was generated (prefix, sites, tls, hosts); no secrets
    DIR/broker/passwd              Mosquitto 2 password file (0600)
    DIR/broker/acl                 the ACL from broker_config/acl.template, prefix filled in
    DIR/broker/tls/ca.crt          --tls: what the broker trusts (client certs under mTLS)
    DIR/broker/tls/server.crt|key  --tls: the broker's certificate and key (0600)
    DIR/ca/ca.crt|ca.key           --tls: the development CA; keep ca.key off the broker
    DIR/coordinator/credentials.toml   [mqtt] + signing_key_file (0600)
    DIR/coordinator/signing.key|pub    the command-signing Ed25519 key pair (key 0600)
    DIR/coordinator/tls/ca.crt|client.crt|client.key   --tls (CN = coordinator)
    DIR/coordinator/train-credentials.toml     `fedmq train`'s own account (0600)
    DIR/coordinator/tls/train-client.crt|key   --tls (CN = coordinator-train)
    DIR/sites/<id>/credentials.toml    site_id, coordinator_public_key_file, [mqtt] (0600)
    DIR/sites/<id>/coordinator.pub     the pinned command-signing public key
    DIR/sites/<id>/tls/ca.crt|client.crt|client.key   --tls (CN = site id)

The broker binds client ids to usernames (broker_config/mosquitto.conf), so each account
holds one connection: ``fedmq serve`` uses ``coordinator``, ``fedmq train`` its own
``coordinator-train`` account (ACL: publish train and cancel commands only).

Paths inside credentials files are where each node's directory is mounted at run time
(``runtime_dir``, e.g. ``/etc/fedmq`` in a container), by default the generated path.
Secrets are never logged: only file paths are.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from coordinator.admin.dev_ca import CertificateAuthority
from coordinator.admin.passwords import (
    generate_password,
    hash_password,
    read_password_file,
    write_password_file,
)
from coordinator.admin.signing import generate_keypair, write_private
from schemas.errors import TopicError
from schemas.topics import DEFAULT_PREFIX, validate_prefix, validate_site_id

__all__ = [
    "COORDINATOR_USER",
    "MANIFEST",
    "TRAIN_USER",
    "BrokerInitError",
    "Layout",
    "add_site",
    "find_acl_template",
    "init_broker",
    "read_sites_file",
    "render_acl",
]

log = logging.getLogger(__name__)

COORDINATOR_USER = "coordinator"
TRAIN_USER = "coordinator-train"
_RESERVED = (COORDINATOR_USER, TRAIN_USER)
MANIFEST = "fedmq-broker.json"
_REPO = Path(__file__).resolve().parents[2]


class BrokerInitError(ValueError):
    """Bad input or an existing directory that would be overwritten (one line)."""


@dataclass(frozen=True)
class Layout:
    """Every path under a generated directory."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def broker(self) -> Path:
        return self.root / "broker"

    @property
    def passwd(self) -> Path:
        return self.broker / "passwd"

    @property
    def acl(self) -> Path:
        return self.broker / "acl"

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def coordinator(self) -> Path:
        return self.root / "coordinator"

    def site(self, site: str) -> Path:
        return self.root / "sites" / site


def read_sites_file(path: Path) -> list[str]:
    """Site ids, one per line; blank lines and ``#`` comments are ignored.

    Raises:
        BrokerInitError: naming the first bad line (invalid or duplicate id).
    """
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise BrokerInitError(f"cannot read {path}: {exc.strerror}") from exc
    sites: list[str] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            _check_site(line)
        except BrokerInitError as exc:
            raise BrokerInitError(f"{path}:{number}: {exc}") from None
        if line in sites:
            raise BrokerInitError(f"{path}:{number}: duplicate site id {line!r}")
        sites.append(line)
    if not sites:
        raise BrokerInitError(f"{path}: no site ids")
    return sites


def _check_site(site: str) -> str:
    try:
        validate_site_id(site)
    except TopicError as exc:
        raise BrokerInitError(str(exc)) from None
    if site in _RESERVED:
        raise BrokerInitError(f"site id {site!r} is reserved for the coordinator's username")
    return site


def find_acl_template(explicit: Path | None = None) -> Path:
    """The ACL template: ``explicit``, else broker_config/ in the source tree or the CWD."""
    candidates = (
        [explicit]
        if explicit
        else [
            _REPO / "broker_config" / "acl.template",
            Path.cwd() / "broker_config" / "acl.template",
        ]
    )
    for path in candidates:
        if path.is_file():
            return path
    raise BrokerInitError(f"ACL template not found ({candidates[0]}): pass --acl-template")


def render_acl(template: str, prefix: str) -> str:
    """The ACL with ``{prefix}``, ``{coordinator}`` and ``{train}`` filled in."""
    validate_prefix(prefix)
    return (
        template.replace("{prefix}", prefix)
        .replace("{coordinator}", COORDINATOR_USER)
        .replace("{train}", TRAIN_USER)
    )


def _toml_str(value: str) -> str:
    # A JSON string of printable text is a valid TOML basic string.
    return json.dumps(value, ensure_ascii=True)


def _credentials(
    manifest: dict[str, object],
    user: str,
    password: str,
    node_dir: Path,
    top: dict[str, str],
    stem: str = "",
) -> bytes:
    runtime = Path(str(manifest["runtime_dir"])) if manifest.get("runtime_dir") else node_dir
    tls = bool(manifest["tls"])
    hosts = list(manifest.get("hosts") or [])  # type: ignore[call-overload]
    lines = [
        f"# fedmq MQTT credentials for {user!r}, generated by `fedmq broker init`.",
        "# SECRET: keep mode 0600. Use as the node's config file, or copy into it.",
    ]
    lines += [f"{k} = {_toml_str(str(runtime / v))}" for k, v in top.items()]
    if user not in _RESERVED:
        lines.insert(2, f"site_id = {_toml_str(user)}")
    lines += [
        "",
        "[mqtt]",
        f"host = {_toml_str(hosts[0] if hosts else 'localhost')}",
        f"port = {8883 if tls else 1883}",
        f"prefix = {_toml_str(str(manifest['prefix']))}",
        f"username = {_toml_str(user)}",
        f"password = {_toml_str(password)}",
    ]
    if tls:
        lines += [
            "tls = true",
            f"ca_file = {_toml_str(str(runtime / 'tls' / 'ca.crt'))}",
            "# Presented only when the broker asks (broker_config/mtls.conf): CN = username.",
            f"cert_file = {_toml_str(str(runtime / 'tls' / f'{stem}client.crt'))}",
            f"key_file = {_toml_str(str(runtime / 'tls' / f'{stem}client.key'))}",
        ]
    return ("\n".join(lines) + "\n").encode()


def _load_ca(layout: Layout) -> CertificateAuthority:
    return CertificateAuthority.load(layout.ca_dir / "ca.crt", layout.ca_dir / "ca.key")


def _add_user(
    layout: Layout,
    manifest: dict[str, object],
    user: str,
    node_dir: Path,
    top: dict[str, str],
    stem: str = "",
) -> list[Path]:
    """Password entry, credentials file and (with TLS) client certificate for one user.

    ``stem`` prefixes the file names, for a second account in the same node directory.
    """
    password = generate_password()
    entries = read_password_file(layout.passwd)
    entries[user] = hash_password(password)
    write_password_file(layout.passwd, entries)
    creds = node_dir / f"{stem}credentials.toml"
    write_private(creds, _credentials(manifest, user, password, node_dir, top, stem))
    written = [creds]
    if manifest["tls"]:
        ca = _load_ca(layout)
        tls = node_dir / "tls"
        cert, key = tls / f"{stem}client.crt", tls / f"{stem}client.key"
        ca.write_ca_cert(tls / "ca.crt")
        ca.issue_client(user, cert, key)
        written += [tls / "ca.crt", cert, key] if not stem else [cert, key]
    log.info("credentials for %s written to %s", user, creds)
    return written


def _add_site(layout: Layout, manifest: dict[str, object], site: str) -> list[Path]:
    node = layout.site(site)
    pub = node / "coordinator.pub"
    node.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(layout.coordinator / "signing.pub", pub)
    top = {"coordinator_public_key_file": "coordinator.pub"}
    return [*_add_user(layout, manifest, site, node, top), pub]


def _write_manifest(layout: Layout, manifest: dict[str, object]) -> None:
    layout.manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def init_broker(
    out: Path,
    sites: Sequence[str],
    prefix: str = DEFAULT_PREFIX,
    tls: bool = False,
    hosts: Iterable[str] = (),
    force: bool = False,
    runtime_dir: Path | None = None,
    acl_template: Path | None = None,
) -> list[Path]:
    """Generate a new deployment directory; return the files written.

    Raises:
        BrokerInitError: invalid input, or ``out`` already holds one (without ``force``).
    """
    for site in sites:
        _check_site(site)
    try:
        validate_prefix(prefix)
    except TopicError as exc:
        raise BrokerInitError(str(exc)) from None
    layout = Layout(Path(out))
    template = find_acl_template(acl_template)
    if layout.root.exists() and any(layout.root.iterdir()) and not force:
        raise BrokerInitError(f"{layout.root} is not empty: pass --force to replace its secrets")
    if force:
        for sub in ("broker", "ca", "coordinator", "sites"):
            shutil.rmtree(layout.root / sub, ignore_errors=True)
    layout.root.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, object] = {
        "prefix": prefix,
        "tls": tls,
        "hosts": list(hosts),
        "coordinator_user": COORDINATOR_USER,
        "train_user": TRAIN_USER,
        "runtime_dir": str(runtime_dir) if runtime_dir else None,
        "sites": [],
    }
    written: list[Path] = []
    layout.broker.mkdir(parents=True, exist_ok=True)
    layout.acl.write_text(render_acl(template.read_text(), prefix))
    written.append(layout.acl)
    if tls:
        ca = CertificateAuthority.create()
        ca.save(layout.ca_dir / "ca.crt", layout.ca_dir / "ca.key")
        btls = layout.broker / "tls"
        ca.write_ca_cert(btls / "ca.crt")
        ca.issue_server(btls / "server.crt", btls / "server.key", list(hosts))
        written += [layout.ca_dir / "ca.crt", layout.ca_dir / "ca.key"]
        written += [btls / "ca.crt", btls / "server.crt", btls / "server.key"]
    coord = layout.coordinator
    generate_keypair(coord / "signing.key", coord / "signing.pub")
    written += [coord / "signing.key", coord / "signing.pub"]
    signing = {"signing_key_file": "signing.key"}
    written += _add_user(layout, manifest, COORDINATOR_USER, coord, signing)
    written += _add_user(layout, manifest, TRAIN_USER, coord, signing, stem="train-")
    for site in sites:
        written += _add_site(layout, manifest, site)
        manifest["sites"].append(site)  # type: ignore[attr-defined]
    written.append(layout.passwd)
    _write_manifest(layout, manifest)
    written.append(layout.manifest)
    return written


def add_site(out: Path, site: str, force: bool = False) -> list[Path]:
    """Add one site to a directory made by :func:`init_broker`; return the files written.

    Raises:
        BrokerInitError: not such a directory, invalid id, or the site exists (no ``force``).
    """
    _check_site(site)
    layout = Layout(Path(out))
    try:
        manifest = json.loads(layout.manifest.read_text())
    except (OSError, ValueError) as exc:
        raise BrokerInitError(f"{layout.manifest} missing or unreadable: run init first") from exc
    sites = list(manifest.get("sites", []))
    if (site in sites or layout.site(site).exists()) and not force:
        raise BrokerInitError(f"site {site!r} already exists: pass --force to replace it")
    written = _add_site(layout, manifest, site)
    if site not in sites:
        manifest["sites"] = [*sites, site]
    _write_manifest(layout, manifest)
    return [*written, layout.passwd, layout.manifest]
