"""``fedmq broker``: credentials, ACL, signing keys and certificates for a secured broker."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from fedmq_runtime.cli import UsageError
from schemas import DEFAULT_PREFIX

__all__ = ["broker"]


@click.group()
def broker() -> None:
    """Generate what a secured broker needs: accounts, permissions, keys, certificates.

    For Mosquitto (passwords + ACL; pair with broker_config/mosquitto.conf or mtls.conf),
    RabbitMQ (definitions and a rabbitmqctl script; broker_config/rabbitmq.conf) or NATS (an
    accounts file to include; broker_config/nats.conf): the same grants on each. Secrets
    go only into files (mode 0600/0700); the command prints file paths, never a password.

    \b
    Example:
        fedmq broker init --sites sites.txt --out deploy --tls --hosts broker.plant.local
        fedmq broker init --sites sites.txt --out deploy --broker nats --reader nodered
        fedmq broker add-site press-7 --out deploy
        fedmq broker add-reader telegraf --out deploy
        fedmq broker add-coordinator ingest-2 --out deploy
    """


_APPLY = {
    "mosquitto": "reload Mosquitto to apply {broker}/passwd and {broker}/acl "
    "(kill -HUP <mosquitto pid>)",
    "rabbitmq": "apply with: sh {broker}/rabbitmq-users.sh (where rabbitmqctl reaches the "
    "node; it imports rabbitmq-definitions.json: creates or updates every account)",
    "nats": "include {broker}/nats-accounts.conf from nats-server.conf and reload it "
    "(nats-server --signal reload)",
}


def _report(written: list[Path], out: Path, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"out": str(out), "written": [str(p) for p in written]}))
        return
    for path in written:
        click.echo(str(path))
    try:
        kind = json.loads((out / "fedmq-broker.json").read_text()).get("broker", "mosquitto")
    except (OSError, ValueError):
        kind = "mosquitto"
    click.echo(_APPLY.get(kind, _APPLY["mosquitto"]).format(broker=out / "broker"), err=True)


@broker.command("init")
@click.option(
    "--sites",
    "sites_file",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Text file with one site id per line (# comments allowed).",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="Topic prefix P.")
@click.option("--tls", is_flag=True, help="Also create a development CA and certificates.")
@click.option(
    "--hosts",
    multiple=True,
    help="Broker host name or IP clients dial (repeatable; also accepts a comma list). "
    "Added to the server certificate; the first goes into credentials files.",
)
@click.option(
    "--runtime-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where each node's directory is mounted at run time (e.g. /etc/fedmq in a "
    "container); paths in credentials files use it. Default: the generated path.",
)
@click.option(
    "--acl-template",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="ACL template (default: broker_config/acl.template).",
)
@click.option(
    "--broker",
    "kind",
    type=click.Choice(["mosquitto", "rabbitmq", "nats"]),
    default="mosquitto",
    show_default=True,
    help="Which broker the accounts are for.",
)
@click.option(
    "--reader",
    "readers",
    multiple=True,
    help="A read-only account (repeatable), for Node-RED, Telegraf or a historian: reads "
    "status, registration, heartbeats, telemetry, predictions and alarms; writes nothing.",
)
@click.option(
    "--coordinator",
    "coordinators",
    multiple=True,
    metavar="NAME",
    help="One more coordinator account (repeatable), one per further `fedmq serve --group` "
    "instance: same rights as `coordinator`, its own password and client id.",
)
@click.option("--force", is_flag=True, help="Replace the secrets of an existing directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the written paths as JSON.")
def init_command(
    sites_file: Path,
    out: Path,
    prefix: str,
    tls: bool,
    hosts: tuple[str, ...],
    runtime_dir: Path | None,
    acl_template: Path | None,
    kind: str,
    readers: tuple[str, ...],
    coordinators: tuple[str, ...],
    force: bool,
    as_json: bool,
) -> None:
    """Generate accounts, permissions, signing keys (and with --tls certificates) into OUT.

    Writes the broker's files into OUT/broker/: Mosquitto passwd + acl; RabbitMQ
    rabbitmq-definitions.json (users with password hashes, queue and topic permissions)
    and rabbitmq-users.sh (imports it with rabbitmqctl); NATS
    nats-accounts.conf (an account with MQTT-only users and subject permissions); tls/.
    Then OUT/coordinator/ (credentials.toml for `fedmq serve`, signing key pair),
    OUT/sites/<id>/ (credentials.toml, coordinator.pub, tls/) per site and
    OUT/readers/<name>/credentials.toml per --reader and OUT/coordinators/<name>/ per
    --coordinator (credentials.toml, a copy of the signing key pair). A site may publish
    only its own topics and read only its own commands and acks. Refuses to overwrite an
    existing directory unless --force.

    \b
    Example:
        printf 'press-1\\npress-2\\n' > sites.txt
        fedmq broker init --sites sites.txt --out deploy --prefix acme/detroit/pdm/fedmq/v1
        fedmq broker init --sites sites.txt --out deploy --tls --hosts mosquitto --force
        fedmq broker init --sites sites.txt --out deploy --broker rabbitmq --reader nodered
    """
    from coordinator.admin.broker_init import BrokerInitError, init_broker, read_sites_file
    from coordinator.admin.dev_ca import DevCaError

    host_list = [h.strip() for item in hosts for h in item.split(",") if h.strip()]
    try:
        sites = read_sites_file(sites_file)
        written = init_broker(
            out,
            sites,
            prefix=prefix,
            tls=tls,
            hosts=host_list,
            force=force,
            runtime_dir=runtime_dir,
            acl_template=acl_template,
            broker=kind,
            readers=list(readers),
            coordinators=list(coordinators),
        )
    except (BrokerInitError, DevCaError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot write to {out}: {exc.strerror or exc}") from None
    _report(written, out, as_json)


@broker.command("add-site")
@click.argument("site")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory of init.")
@click.option("--force", is_flag=True, help="Replace the site's password and certificate.")
@click.option("--json", "as_json", is_flag=True, help="Print the written paths as JSON.")
def add_site_command(site: str, out: Path, force: bool, as_json: bool) -> None:
    """Add SITE to a directory made by `fedmq broker init` (same prefix, TLS, CA).

    The ACL needs no change (it grants by username); reload the broker so that it
    rereads the password file.

    \b
    Example:
        fedmq broker add-site press-7 --out deploy
    """
    from coordinator.admin.broker_init import add_site

    _report(_add(lambda: add_site(out, site, force=force), out), out, as_json)


@broker.command("add-reader")
@click.argument("name")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory of init.")
@click.option("--force", is_flag=True, help="Replace the reader's password and certificate.")
@click.option("--json", "as_json", is_flag=True, help="Print the written paths as JSON.")
def add_reader_command(name: str, out: Path, force: bool, as_json: bool) -> None:
    """Add a read-only account NAME to a directory made by `fedmq broker init`.

    NAME may subscribe to every site's status, registration, heartbeats, telemetry,
    predictions and alarms and to the coordinator's status, and publish nothing: for
    Node-RED, Telegraf or a historian (docs/integrations.md). Its credentials go to
    OUT/readers/NAME/credentials.toml; apply the broker files again (printed).

    \b
    Example:
        fedmq broker add-reader nodered --out deploy
    """
    from coordinator.admin.broker_init import BrokerInitError, add_reader
    from coordinator.admin.dev_ca import DevCaError

    try:
        written = add_reader(out, name, force=force)
    except (BrokerInitError, DevCaError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot write to {out}: {exc.strerror or exc}") from None
    _report(written, out, as_json)


@broker.command("add-coordinator")
@click.argument("name")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory of init.")
@click.option("--force", is_flag=True, help="Replace the account's password and certificate.")
@click.option("--json", "as_json", is_flag=True, help="Print the written paths as JSON.")
def add_coordinator_command(name: str, out: Path, force: bool, as_json: bool) -> None:
    """Add a coordinator account NAME for one more `fedmq serve --group` instance.

    Every instance of an ingest group needs its own account: the shipped Mosquitto config
    makes the client id the username, so two instances on one account would keep
    disconnecting each other (and RabbitMQ ties queue permissions to it). NAME gets the
    coordinator's rights (any instance may lead) and OUT/coordinators/NAME/ holds its
    credentials.toml (client_id = NAME) and a copy of the command-signing key pair.
    Apply the broker files again (printed).

    \b
    Example:
        fedmq broker add-coordinator ingest-2 --out deploy
        fedmq serve --config deploy/coordinators/ingest-2/credentials.toml \\
            --db postgresql://fedmq@db.plant:5432/fedmq --group plant --no-http
    """
    from coordinator.admin.broker_init import add_coordinator

    _report(_add(lambda: add_coordinator(out, name, force=force), out), out, as_json)


def _add(write: Callable[[], Any], out: Path) -> Any:
    """Run an add-* command's write; its refusals and OS errors as usage errors."""
    from coordinator.admin.broker_init import BrokerInitError
    from coordinator.admin.dev_ca import DevCaError

    try:
        return write()
    except (BrokerInitError, DevCaError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot write to {out}: {exc.strerror or exc}") from None
