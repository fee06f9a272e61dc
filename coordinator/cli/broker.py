"""``fedmq broker``: credentials, ACL, signing keys and certificates for a secured broker."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fedmq_runtime.cli import UsageError
from schemas import DEFAULT_PREFIX

__all__ = ["broker"]


@click.group()
def broker() -> None:
    """Generate what a secured Mosquitto needs: passwords, ACL, keys, certificates.

    Pair the output with broker_config/mosquitto.conf (passwords, TLS) or
    broker_config/mtls.conf (client certificates). Secrets go only into files (mode
    0600); the command prints file paths, never a password or key.

    \b
    Example:
        fedmq broker init --sites sites.txt --out deploy --tls --hosts broker.plant.local
        fedmq broker add-site press-7 --out deploy
    """


def _report(written: list[Path], out: Path, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"out": str(out), "written": [str(p) for p in written]}))
        return
    for path in written:
        click.echo(str(path))
    click.echo(
        f"reload the broker to apply {out / 'broker' / 'passwd'} (kill -HUP <mosquitto pid>)",
        err=True,
    )


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
    force: bool,
    as_json: bool,
) -> None:
    """Generate passwords, ACL, signing keys (and with --tls certificates) into OUT.

    Writes OUT/broker/{passwd,acl,tls/} for the broker, OUT/coordinator/ (credentials.toml
    for `fedmq serve`, train-credentials.toml for `fedmq train`: the broker binds client
    ids to usernames, so each process has its own account; signing key pair) and
    OUT/sites/<id>/ (credentials.toml, coordinator.pub, tls/) per site. Refuses to
    overwrite an existing directory unless --force.

    \b
    Example:
        printf 'press-1\\npress-2\\n' > sites.txt
        fedmq broker init --sites sites.txt --out deploy --prefix acme/detroit/pdm/fedmq/v1
        fedmq broker init --sites sites.txt --out deploy --tls --hosts mosquitto --force
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
    from coordinator.admin.broker_init import BrokerInitError, add_site
    from coordinator.admin.dev_ca import DevCaError

    try:
        written = add_site(out, site, force=force)
    except (BrokerInitError, DevCaError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot write to {out}: {exc.strerror or exc}") from None
    _report(written, out, as_json)
