"""Generate everything a secured broker deployment needs, in one directory.

``init_broker`` writes (``add_site`` and ``add_reader`` extend an existing directory)::

    DIR/fedmq-broker.json          what was generated (broker, prefix, sites, readers, tls,
                                   hosts); no secrets
    DIR/broker/passwd              mosquitto: Mosquitto 2 password file (0600)
    DIR/broker/acl                 mosquitto: the ACL from broker_config/acl.template
    DIR/broker/rabbitmq-definitions.json  rabbitmq: users (password hashes), queue and
                                   topic permissions (0600)
    DIR/broker/rabbitmq-users.sh   rabbitmq: imports them with rabbitmqctl
    DIR/broker/nats-accounts.conf  nats: an account with its users and subject
                                   permissions, to include from nats-server.conf (0600)
    DIR/broker/tls/ca.crt          --tls: what the broker trusts (client certs under mTLS)
    DIR/broker/tls/server.crt|key  --tls: the broker's certificate and key (0600)
    DIR/ca/ca.crt|ca.key           --tls: the development CA; keep ca.key off the broker
    DIR/coordinator/credentials.toml   [mqtt] + signing_key_file (0600)
    DIR/coordinator/signing.key|pub    the command-signing Ed25519 key pair (key 0600)
    DIR/coordinator/tls/ca.crt|client.crt|client.key   --tls (CN = coordinator)
    DIR/sites/<id>/credentials.toml    site_id, coordinator_public_key_file, [mqtt] (0600)
    DIR/sites/<id>/coordinator.pub     the pinned command-signing public key
    DIR/sites/<id>/tls/ca.crt|client.crt|client.key   --tls (CN = site id)
    DIR/readers/<name>/credentials.toml  [mqtt] of a read-only consumer (0600)
    DIR/readers/<name>/tls/...           --tls (CN = name)
    DIR/coordinators/<name>/credentials.toml  --coordinator: one more coordinator account
                                   (client_id = name), for another `fedmq serve --group`
                                   instance, with a copy of the signing key pair; tls/

Every broker gets the same grants (:func:`grants`): a site publishes only its own status,
registration, heartbeat, telemetry, job status/results, predictions and alarms and reads
only its own commands and acks and the coordinator's status; the coordinator reads and
writes everything under the prefix; a reader (Node-RED, Telegraf, a historian) reads
status, registration, heartbeats, telemetry, predictions, alarms and the coordinator's
status of every site and publishes nothing. Each extra coordinator account (``--coordinator
NAME``, one per further instance of an ingest group: any instance may lead) has the
coordinator's grants: on the shipped Mosquitto config the client id is the username, so
two instances on one account would keep disconnecting each other. On RabbitMQ
(rabbitmq_mqtt) an MQTT topic is an AMQP routing key with ``/`` as ``.``, and topic
permissions are regexes on it; on NATS it is a subject with ``/`` as ``.``, ``+`` as ``*``
and ``#`` as ``>``.

Paths inside credentials files are where each node's directory is mounted at run time
(``runtime_dir``, e.g. ``/etc/fedmq`` in a container), by default the generated path.
Secrets are never logged: only file paths are.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import shlex
import shutil
import sys
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

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "BROKERS",
    "COORDINATOR_USER",
    "MANIFEST",
    "BrokerInitError",
    "Grants",
    "Layout",
    "add_coordinator",
    "add_reader",
    "add_site",
    "find_acl_template",
    "grants",
    "init_broker",
    "nats_subjects",
    "rabbit_regex",
    "rabbitmq_password_hash",
    "read_sites_file",
    "render_acl",
    "render_nats_accounts",
    "render_rabbitmq_definitions",
    "render_rabbitmq_script",
]

log = logging.getLogger(__name__)

COORDINATOR_USER = "coordinator"
_RESERVED = (COORDINATOR_USER,)
MANIFEST = "fedmq-broker.json"
BROKERS = ("mosquitto", "rabbitmq", "nats")
NATS_ACCOUNT = "FEDMQ"
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
    def rabbitmq_script(self) -> Path:
        return self.broker / "rabbitmq-users.sh"

    @property
    def rabbitmq_definitions(self) -> Path:
        return self.broker / "rabbitmq-definitions.json"

    @property
    def nats_accounts(self) -> Path:
        return self.broker / "nats-accounts.conf"

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def coordinator(self) -> Path:
        return self.root / "coordinator"

    def site(self, site: str) -> Path:
        return self.root / "sites" / site

    def reader(self, name: str) -> Path:
        return self.root / "readers" / name

    def extra_coordinator(self, name: str) -> Path:
        return self.root / "coordinators" / name


# --- Grants: one model, rendered for each broker -----------------------------------------


@dataclass(frozen=True)
class Grants:
    """What one account may publish (``write``) and subscribe to (``read``), as MQTT
    topic filters (``+`` one level, ``#`` the rest)."""

    user: str
    role: str  # "coordinator", "site" or "reader"
    write: tuple[str, ...]
    read: tuple[str, ...]


# The per-site channels a reader may read (DESIGN's topic table: prediction and alarm are
# what a deployed model publishes).
_SITE_WRITES = (
    "status",
    "registration",
    "heartbeat",
    "telemetry/+",
    "job/+/status",
    "job/+/result",
    "prediction/+",
    "alarm/+",
    "deployment",
)
READ_CHANNELS = (
    "status",
    "registration",
    "heartbeat",
    "telemetry/+",
    "prediction/+",
    "alarm/+",
    "deployment",
)


def grants(
    prefix: str,
    sites: Iterable[str],
    readers: Iterable[str] = (),
    coordinators: Iterable[str] = (),
) -> list[Grants]:
    """Every account's grants: the coordinator (and each extra coordinator account of an
    ingest group: ``coordinators``), each site, each reader."""
    everything = (f"{prefix}/#",)
    out = [
        Grants(user, "coordinator", everything, everything)
        for user in (COORDINATOR_USER, *coordinators)
    ]
    for site in sites:
        base = f"{prefix}/site/{site}"
        out.append(
            Grants(
                site,
                "site",
                tuple(f"{base}/{c}" for c in _SITE_WRITES),
                (f"{base}/cmd/#", f"{base}/ack", f"{prefix}/coordinator/status"),
            )
        )
    for name in readers:
        reads = tuple(f"{prefix}/site/+/{c}" for c in READ_CHANNELS)
        out.append(Grants(name, "reader", (), (*reads, f"{prefix}/coordinator/status")))
    return out


def rabbit_regex(filters: Sequence[str]) -> str:
    """A RabbitMQ topic-permission regex matching the routing keys of ``filters`` (MQTT
    ``/`` is ``.``) and the binding keys of subscriptions within them (``+`` -> ``*``,
    ``#`` -> ``#``). ``^$`` (nothing) for no filters."""
    if not filters:
        return "^$"
    alternatives = []
    for topic in filters:
        levels = topic.split("/")
        rest = ""
        if levels[-1] == "#":
            levels, rest = levels[:-1], r"(\..+)?"
        parts = [r"[^.#]+" if lv == "+" else re.escape(lv) for lv in levels]
        alternatives.append(r"\.".join(parts) + rest)
    return "^(" + "|".join(alternatives) + ")$"


def nats_subjects(filters: Sequence[str]) -> list[str]:
    """NATS subjects of MQTT ``filters``: ``/`` -> ``.``, ``+`` -> ``*``; ``a/#`` is both
    ``a`` and ``a.>`` (MQTT's ``#`` matches its parent level too)."""
    out: list[str] = []
    for topic in filters:
        levels = ["*" if lv == "+" else lv for lv in topic.split("/")]
        if levels[-1] == "#":
            out += [".".join(levels[:-1]), ".".join([*levels[:-1], ">"])]
        else:
            out.append(".".join(levels))
    return list(dict.fromkeys(out))


def rabbitmq_password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + SHA-256(salt +
    password)) with a 4-byte random salt, as definitions files carry it."""
    salt = secrets.token_bytes(4) if salt is None else salt
    digest = hashlib.sha256(salt + password.encode()).digest()
    return base64.b64encode(salt + digest).decode()


def render_rabbitmq_definitions(
    accounts: Sequence[Grants], passwords: dict[str, str], vhost: str = "/"
) -> dict[str, object]:
    """RabbitMQ definitions (``rabbitmqctl import_definitions``): every account with its
    password hash, queue permissions on its own MQTT queues and topic permissions on
    ``amq.topic``. Importing merges: other users and vhosts stay as they are."""
    users, perms, topics = [], [], []
    for g in accounts:
        queues = f"mqtt-subscription-{re.escape(g.user)}qos[01]"
        users.append(
            {
                "name": g.user,
                "password_hash": rabbitmq_password_hash(passwords[g.user]),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": [],
            }
        )
        perms.append(
            {
                "user": g.user,
                "vhost": vhost,
                "configure": f"^({queues})$",
                "write": rf"^(amq\.topic|{queues})$",
                "read": rf"^(amq\.topic|{queues})$",
            }
        )
        topics.append(
            {
                "user": g.user,
                "vhost": vhost,
                "exchange": "amq.topic",
                "write": rabbit_regex(g.write),
                "read": rabbit_regex(g.read),
            }
        )
    return {
        "users": users,
        "vhosts": [{"name": vhost}],
        "permissions": perms,
        "topic_permissions": topics,
    }


def render_rabbitmq_script(prefix: str, accounts: Sequence[Grants]) -> str:
    """A POSIX shell script that imports rabbitmq-definitions.json with one rabbitmqctl
    command (each rabbitmqctl call starts an Erlang VM: one call, not four per account),
    with every account's grants spelled out in comments."""
    lines = [
        "#!/bin/sh",
        f"# fedmq accounts for RabbitMQ (rabbitmq_mqtt), prefix {prefix}, generated by",
        "# `fedmq broker init --broker rabbitmq`. Run it where rabbitmqctl reaches the node:",
        "#     sh rabbitmq-users.sh          (RABBITMQCTL overrides the command)",
        "# It imports rabbitmq-definitions.json (next to it; password hashes, keep it 0600):",
        "# users are created or updated, other users and settings are left alone.",
        "#",
        "# Topic permissions are regexes on routing keys (MQTT topic with / as .) of",
        "# amq.topic, vhost / (rabbitmq_mqtt's defaults): writes are checked on publish,",
        "# reads on subscribe (the binding key, + as *, # as #). A client's own queues are",
        "# mqtt-subscription-<client id>qos0/qos1: each account may only declare and read",
        "# those of the client id equal to its username, so connect with client id =",
        "# username (sites do; `fedmq serve` gets client_id in its credentials).",
        "#",
    ]
    for g in accounts:
        lines += [
            f"# {g.role} {g.user}:",
            f"#   write {rabbit_regex(g.write)}",
            f"#   read  {rabbit_regex(g.read)}",
        ]
    lines += [
        "set -eu",
        'CTL="${RABBITMQCTL:-rabbitmqctl}"',
        'HERE="$(cd "$(dirname "$0")" && pwd)"',
        '"$CTL" import_definitions "$HERE/rabbitmq-definitions.json" >/dev/null',
        *(f"echo {shlex.quote(f'account {g.user}')}" for g in accounts),
    ]
    return "\n".join(lines) + "\n"


def render_nats_accounts(prefix: str, accounts: Sequence[Grants], passwords: dict[str, str]) -> str:
    """A nats-server config fragment: account FEDMQ (JetStream on, which MQTT needs) with
    one MQTT-only user per account and its publish/subscribe permissions."""
    users = []
    for g in accounts:
        publish: dict[str, list[str]] = (
            {"allow": nats_subjects(g.write)} if g.write else {"deny": [">"]}
        )
        # $MQTT.sub.>: where the server delivers a QoS 1 subscription's JetStream messages.
        subscribe = {"allow": [*nats_subjects(g.read), "$MQTT.sub.>"]}
        users.append(
            {
                "user": g.user,
                "password": passwords[g.user],
                "allowed_connection_types": ["MQTT"],
                "permissions": {"publish": publish, "subscribe": subscribe},
            }
        )
    body = json.dumps({NATS_ACCOUNT: {"jetstream": "enabled", "users": users}}, indent=2)
    return (
        f"# fedmq accounts for nats-server (MQTT), prefix {prefix}, generated by\n"
        "# `fedmq broker init --broker nats`. SECRET: it holds the passwords (mode 0600).\n"
        "# Include it from nats-server.conf (see broker_config/nats.conf):\n"
        "#     include fedmq/nats-accounts.conf\n"
        "# MQTT topics are subjects with / as . (+ is *, # is >); a user's subscribe\n"
        "# permissions also allow $MQTT.sub.> (the server's delivery subject for QoS 1).\n"
        f"accounts: {body}\n"
    )


# --- Input --------------------------------------------------------------------------------


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


def _check_reader(name: str) -> str:
    try:
        validate_site_id(name)
    except TopicError:
        raise BrokerInitError(
            f"reader name {name!r}: use [a-z0-9][a-z0-9_-]{{0,63}} (it is a username)"
        ) from None
    if name in _RESERVED:
        raise BrokerInitError(f"reader name {name!r} is reserved for the coordinator")
    return name


def _check_coordinator(name: str) -> str:
    try:
        validate_site_id(name)
    except TopicError:
        raise BrokerInitError(
            f"coordinator account {name!r}: use [a-z0-9][a-z0-9_-]{{0,63}} (it is a username "
            "and the instance's client id)"
        ) from None
    if name in _RESERVED:
        raise BrokerInitError(f"{name!r} is the first coordinator account: pick another name")
    return name


def _check_broker(broker: str) -> str:
    if broker not in BROKERS:
        raise BrokerInitError(f"unknown broker {broker!r}: one of {', '.join(BROKERS)}")
    return broker


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


def render_acl(
    template: str, prefix: str, readers: Iterable[str] = (), coordinators: Iterable[str] = ()
) -> str:
    """The Mosquitto ACL with ``{prefix}`` and ``{coordinator}`` filled in, a block per
    extra coordinator account (``coordinators``) and one per read-only ``readers`` account."""
    validate_prefix(prefix)
    text = template.replace("{prefix}", prefix).replace("{coordinator}", COORDINATOR_USER)
    for name in coordinators:
        text += (
            f"\n# --- Coordinator account {name}: one more `fedmq serve --group` instance (any\n"
            "# instance may lead, so each has the coordinator's rights). Its shared subscription\n"
            "# $share/GROUP/P/site/+/telemetry/+ is checked, like any read, per delivered\n"
            "# message on the message's own topic.\n"
            f"user {name}\n"
            f"topic readwrite {prefix}/#\n"
        )
    for g in grants(prefix, (), readers):
        if g.role != "reader":
            continue
        text += (
            f"\n# --- Read-only consumer {g.user} (Node-RED, Telegraf, a historian): reads every\n"
            "# site's status, registration, heartbeats, telemetry, predictions and alarms and\n"
            "# the coordinator's status; writes nothing. The deny line voids the pattern rights\n"
            "# above, which every authenticated username gets (deny is checked first).\n"
            f"user {g.user}\n"
            f"topic deny {prefix}/site/{g.user}/#\n"
        )
        text += "".join(f"topic read {t}\n" for t in g.read)
    return text


# --- Files --------------------------------------------------------------------------------


def _toml_str(value: str) -> str:
    # A JSON string of printable text is a valid TOML basic string.
    return json.dumps(value, ensure_ascii=True)


def _credentials(
    manifest: dict[str, object],
    user: str,
    password: str,
    node_dir: Path,
    top: dict[str, str],
    role: str,
) -> bytes:
    runtime = Path(str(manifest["runtime_dir"])) if manifest.get("runtime_dir") else node_dir
    tls = bool(manifest["tls"])
    broker = str(manifest.get("broker", "mosquitto"))
    hosts = list(manifest.get("hosts") or [])  # type: ignore[call-overload]
    lines = [
        f"# fedmq MQTT credentials for {user!r}, generated by `fedmq broker init`.",
        "# SECRET: keep mode 0600. Use as the node's config file, or copy into it.",
    ]
    if role == "site":
        lines.append(f"site_id = {_toml_str(user)}")
    if role == "coordinator" and (broker != "mosquitto" or user != COORDINATOR_USER):
        # RabbitMQ's queue permissions (and NATS sessions) follow the client id; an extra
        # coordinator account is an ingest group's instance, which needs its own client id
        # (Mosquitto's shipped config makes it the username anyway).
        lines.append(f"client_id = {_toml_str(user)}")
    lines += [f"{k} = {_toml_str(str(runtime / v))}" for k, v in top.items()]
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
            f"cert_file = {_toml_str(str(runtime / 'tls' / 'client.crt'))}",
            f"key_file = {_toml_str(str(runtime / 'tls' / 'client.key'))}",
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
    role: str,
) -> list[Path]:
    """Password (Mosquitto: its hash in passwd), credentials file and (with TLS) client
    certificate for one account."""
    password = generate_password()
    if manifest.get("broker", "mosquitto") == "mosquitto":
        entries = read_password_file(layout.passwd)
        entries[user] = hash_password(password)
        write_password_file(layout.passwd, entries)
    creds = node_dir / "credentials.toml"
    write_private(creds, _credentials(manifest, user, password, node_dir, top, role))
    written = [creds]
    if manifest["tls"]:
        ca = _load_ca(layout)
        tls = node_dir / "tls"
        cert, key = tls / "client.crt", tls / "client.key"
        ca.write_ca_cert(tls / "ca.crt")
        ca.issue_client(user, cert, key)
        written += [tls / "ca.crt", cert, key]
    log.info("credentials for %s written to %s", user, creds)
    return written


def _add_site(layout: Layout, manifest: dict[str, object], site: str) -> list[Path]:
    node = layout.site(site)
    pub = node / "coordinator.pub"
    node.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(layout.coordinator / "signing.pub", pub)
    top = {"coordinator_public_key_file": "coordinator.pub"}
    return [*_add_user(layout, manifest, site, node, top, "site"), pub]


def _add_extra_coordinator(layout: Layout, manifest: dict[str, object], name: str) -> list[Path]:
    """One more coordinator account, with a copy of the command-signing key pair (the
    instance that leads signs the commands)."""
    node = layout.extra_coordinator(name)
    node.mkdir(parents=True, exist_ok=True)
    key, pub = node / "signing.key", node / "signing.pub"
    write_private(key, (layout.coordinator / "signing.key").read_bytes())
    shutil.copyfile(layout.coordinator / "signing.pub", pub)
    top = {"signing_key_file": "signing.key"}
    return [*_add_user(layout, manifest, name, node, top, "coordinator"), key, pub]


def _add_reader(layout: Layout, manifest: dict[str, object], name: str) -> list[Path]:
    node = layout.reader(name)
    node.mkdir(parents=True, exist_ok=True)
    return _add_user(layout, manifest, name, node, {}, "reader")


def _password_of(path: Path) -> str:
    return str(tomllib.loads(path.read_text())["mqtt"]["password"])


def _write_broker_files(layout: Layout, manifest: dict[str, object], template: str) -> list[Path]:
    """The broker's own files, rendered from the manifest (and for RabbitMQ and NATS the
    passwords in the credentials files)."""
    prefix = str(manifest["prefix"])
    sites = list(manifest.get("sites", []))  # type: ignore[call-overload]
    readers = list(manifest.get("readers", []))  # type: ignore[call-overload]
    coordinators = list(manifest.get("coordinators", []))  # type: ignore[call-overload]
    broker = str(manifest.get("broker", "mosquitto"))
    layout.broker.mkdir(parents=True, exist_ok=True)
    if broker == "mosquitto":
        layout.acl.write_text(render_acl(template, prefix, readers, coordinators))
        return [layout.acl, layout.passwd]
    accounts = grants(prefix, sites, readers, coordinators)
    files = {COORDINATOR_USER: layout.coordinator / "credentials.toml"}
    files |= {c: layout.extra_coordinator(c) / "credentials.toml" for c in coordinators}
    files |= {s: layout.site(s) / "credentials.toml" for s in sites}
    files |= {r: layout.reader(r) / "credentials.toml" for r in readers}
    passwords = {user: _password_of(path) for user, path in files.items()}
    if broker == "rabbitmq":
        definitions = render_rabbitmq_definitions(accounts, passwords)
        write_private(
            layout.rabbitmq_definitions, (json.dumps(definitions, indent=2) + "\n").encode()
        )
        layout.rabbitmq_script.write_text(render_rabbitmq_script(prefix, accounts))
        layout.rabbitmq_script.chmod(0o755)
        return [layout.rabbitmq_definitions, layout.rabbitmq_script]
    write_private(layout.nats_accounts, render_nats_accounts(prefix, accounts, passwords).encode())
    return [layout.nats_accounts]


def _write_manifest(layout: Layout, manifest: dict[str, object]) -> None:
    layout.manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _read_manifest(layout: Layout) -> dict[str, object]:
    try:
        manifest: dict[str, object] = json.loads(layout.manifest.read_text())
    except (OSError, ValueError) as exc:
        raise BrokerInitError(f"{layout.manifest} missing or unreadable: run init first") from exc
    manifest.setdefault("broker", "mosquitto")
    manifest.setdefault("readers", [])
    manifest.setdefault("coordinators", [])
    return manifest


def init_broker(
    out: Path,
    sites: Sequence[str],
    prefix: str = DEFAULT_PREFIX,
    tls: bool = False,
    hosts: Iterable[str] = (),
    force: bool = False,
    runtime_dir: Path | None = None,
    acl_template: Path | None = None,
    broker: str = "mosquitto",
    readers: Sequence[str] = (),
    coordinators: Sequence[str] = (),
) -> list[Path]:
    """Generate a new deployment directory; return the files written. ``coordinators``:
    extra coordinator accounts, one per further instance of an ingest group.

    Raises:
        BrokerInitError: invalid input, or ``out`` already holds one (without ``force``).
    """
    _check_broker(broker)
    for site in sites:
        _check_site(site)
    for name in readers:
        _check_reader(name)
    clash = sorted(set(sites) & set(readers)) or sorted(
        {n for n in readers if list(readers).count(n) > 1}
    )
    if clash:
        raise BrokerInitError(f"{clash}: a reader name must differ from every site and reader")
    names = [*sites, *readers, *coordinators]
    for name in coordinators:
        _check_coordinator(name)
        if names.count(name) > 1:
            raise BrokerInitError(
                f"coordinator account {name!r}: must differ from every site, reader and "
                "other coordinator account"
            )
    try:
        validate_prefix(prefix)
    except TopicError as exc:
        raise BrokerInitError(str(exc)) from None
    layout = Layout(Path(out))
    template = find_acl_template(acl_template).read_text() if broker == "mosquitto" else ""
    if layout.root.exists() and any(layout.root.iterdir()) and not force:
        raise BrokerInitError(f"{layout.root} is not empty: pass --force to replace its secrets")
    if force:
        for sub in ("broker", "ca", "coordinator", "coordinators", "sites", "readers"):
            shutil.rmtree(layout.root / sub, ignore_errors=True)
    layout.root.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, object] = {
        "broker": broker,
        "prefix": prefix,
        "tls": tls,
        "hosts": list(hosts),
        "coordinator_user": COORDINATOR_USER,
        "runtime_dir": str(runtime_dir) if runtime_dir else None,
        "sites": list(sites),
        "readers": list(readers),
        "coordinators": list(coordinators),
    }
    written: list[Path] = []
    layout.broker.mkdir(parents=True, exist_ok=True)
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
    written += _add_user(layout, manifest, COORDINATOR_USER, coord, signing, "coordinator")
    for site in sites:
        written += _add_site(layout, manifest, site)
    for name in coordinators:
        written += _add_extra_coordinator(layout, manifest, name)
    for name in readers:
        written += _add_reader(layout, manifest, name)
    written += _write_broker_files(layout, manifest, template)
    _write_manifest(layout, manifest)
    written.append(layout.manifest)
    return written


def _template_for(manifest: dict[str, object]) -> str:
    if manifest.get("broker", "mosquitto") != "mosquitto":
        return ""
    return find_acl_template().read_text()


def add_site(out: Path, site: str, force: bool = False) -> list[Path]:
    """Add one site to a directory made by :func:`init_broker`; return the files written.

    Raises:
        BrokerInitError: not such a directory, invalid id, or the site exists (no ``force``).
    """
    _check_site(site)
    layout = Layout(Path(out))
    manifest = _read_manifest(layout)
    sites = list(manifest.get("sites", []))  # type: ignore[call-overload]
    if site in list(manifest["readers"]):  # type: ignore[call-overload]
        raise BrokerInitError(f"{site!r} is a reader's name")
    if site in list(manifest["coordinators"]):  # type: ignore[call-overload]
        raise BrokerInitError(f"{site!r} is a coordinator account's name")
    if (site in sites or layout.site(site).exists()) and not force:
        raise BrokerInitError(f"site {site!r} already exists: pass --force to replace it")
    written = _add_site(layout, manifest, site)
    if site not in sites:
        manifest["sites"] = [*sites, site]
    written += _write_broker_files(layout, manifest, _template_for(manifest))
    _write_manifest(layout, manifest)
    return [*dict.fromkeys([*written, layout.manifest])]


def add_reader(out: Path, name: str, force: bool = False) -> list[Path]:
    """Add a read-only account to a directory made by :func:`init_broker`.

    Raises:
        BrokerInitError: not such a directory, invalid name, a site's name, or the reader
            exists (no ``force``).
    """
    _check_reader(name)
    layout = Layout(Path(out))
    manifest = _read_manifest(layout)
    readers = list(manifest["readers"])  # type: ignore[call-overload]
    if name in list(manifest.get("sites", [])):  # type: ignore[call-overload]
        raise BrokerInitError(f"{name!r} is a site's id: a reader name must differ")
    if name in list(manifest["coordinators"]):  # type: ignore[call-overload]
        raise BrokerInitError(f"{name!r} is a coordinator account's name")
    if name in readers and not force:
        raise BrokerInitError(f"reader {name!r} already exists: pass --force to replace it")
    written = _add_reader(layout, manifest, name)
    if name not in readers:
        manifest["readers"] = [*readers, name]
    written += _write_broker_files(layout, manifest, _template_for(manifest))
    _write_manifest(layout, manifest)
    return [*dict.fromkeys([*written, layout.manifest])]


def add_coordinator(out: Path, name: str, force: bool = False) -> list[Path]:
    """Add a coordinator account to a directory made by :func:`init_broker`: for one more
    ``fedmq serve --group`` instance (each instance needs its own account and client id).

    Raises:
        BrokerInitError: not such a directory, invalid name, a site's or reader's name, or
            the account exists (no ``force``).
    """
    _check_coordinator(name)
    layout = Layout(Path(out))
    manifest = _read_manifest(layout)
    coordinators = list(manifest["coordinators"])  # type: ignore[call-overload]
    taken = [*manifest.get("sites", []), *manifest["readers"]]  # type: ignore[misc]
    if name in taken:
        raise BrokerInitError(f"{name!r} is a site's or reader's name: pick another")
    if name in coordinators and not force:
        raise BrokerInitError(
            f"coordinator account {name!r} already exists: pass --force to replace it"
        )
    written = _add_extra_coordinator(layout, manifest, name)
    if name not in coordinators:
        manifest["coordinators"] = [*coordinators, name]
    written += _write_broker_files(layout, manifest, _template_for(manifest))
    _write_manifest(layout, manifest)
    return [*dict.fromkeys([*written, layout.manifest])]
