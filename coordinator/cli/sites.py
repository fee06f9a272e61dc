"""``fedmq sites``: which sites are online, stale or offline."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from coordinator.cli.output import ago, connect, db_option, echo_json, table
from fedmq_runtime.cli import NotFound, UsageError
from fedmq_runtime.clock import now_ms

__all__ = ["sites"]

_STATES = ("online", "stale", "offline", "conflict")
_HEADER = ("SITE", "STATE", "LAST SEEN", "SESSION", "DEVICE", "OUTBOX", "TASKS", "LOCATION")


def _render(db: Path, state: str | None, as_json: bool, json_lines: bool = False) -> None:
    reader = connect(db)
    now = now_ms()
    rows, info = reader.sites(state, now)
    reader.close()
    if json_lines:  # --watch --json: one document per line, for a consumer to follow
        click.echo(json.dumps({"at": now, "coordinator": info, "sites": rows}, default=str))
        return
    if as_json:
        echo_json({"coordinator": info, "sites": rows})
        return
    if not info["running"]:
        # States below are still computed from stored heartbeats, so nothing shows online
        # that has not been heard from recently; say why nothing is being updated.
        click.echo(
            f"note: coordinator not running (last active {ago(info['alive_at'], now)} ago)",
            err=True,
        )
    body = [
        (
            r["site"],
            r["state"],
            ago(r["last_seen"], now),
            r["session"],
            r["device"] or "-",
            f"{r['outbox_depth']} ({r['outbox_error']})"
            if r["outbox_error"]
            else r["outbox_depth"],
            ",".join(r["tasks"]) or "-",
            r["location"] or "-",
        )
        for r in rows
    ]
    click.echo(table(body, _HEADER))
    counts = {s: sum(1 for r in rows if r["state"] == s) for s in _STATES}
    click.echo(", ".join(f"{n} {s}" for s, n in counts.items() if n or s != "conflict"))
    for r in rows:
        if r["state"] == "conflict":
            click.echo(f"conflict: {r['site']}: {r['reason']}", err=True)


@click.group(invoke_without_command=True)
@db_option
@click.option("--state", type=click.Choice(_STATES), help="Only this state.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--watch",
    is_flag=True,
    help="Refresh every --every seconds until Ctrl-C (with --json: one JSON line each time).",
)
@click.option(
    "--every",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Watch period in seconds.",
)
@click.pass_context
def sites(
    ctx: click.Context, db: Path, state: str | None, as_json: bool, watch: bool, every: float
) -> None:
    """List sites with their liveness (computed now from the stored status and heartbeats).

    A site is online while its retained status is online and its last heartbeat is within
    PATIENCE x interval; stale when heartbeats stopped; offline after its Will;
    conflict while two live processes use the same site id (a copied config). OUTBOX
    shows the site's unacked messages, and why it cannot store any more (e.g. disk full).

    \b
    Example:
        fedmq sites --db fedmq.db
        fedmq sites --state stale --json
        fedmq sites --watch --every 1
        fedmq sites --watch --json | jq -c '.sites[] | [.site, .state]'
        fedmq sites forget old-press-7 --db fedmq.db   # a site that is gone
    """
    if ctx.invoked_subcommand is not None:
        return
    if not watch:
        _render(db, state, as_json)
        return
    try:
        while True:
            if not as_json:
                click.clear()  # only when stdout is a terminal
            _render(db, state, as_json, json_lines=as_json)
            time.sleep(every)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends: exit 0


@sites.command("forget")
@click.argument("site")
@db_option
@click.option("--purge", is_flag=True, help="Also delete its telemetry, messages, heartbeats, "
              "events, gaps, streams and devices.")  # fmt: skip
def forget(site: str, db: Path, purge: bool) -> None:
    """Remove a deregistered SITE from the site list.

    Its telemetry, messages, heartbeats and events are kept (query them by id) unless
    --purge; a `forgotten` event records when. Only a deregistered site (`fedmq-site
    deregister` cleared its retained status and registration): a live one is refused,
    and so is an offline one whose retained messages are still on the broker (serve
    would list it again at its next subscription); for a machine that is gone, clear
    them with an account that may write the site's topics, e.g.

    \b
        mosquitto_pub -r -n -t P/site/SITE/status
        mosquitto_pub -r -n -t P/site/SITE/registration

    A site that publishes again is listed again. Safe while `fedmq serve` runs (one
    short transaction).

    \b
    Example:
        fedmq sites forget old-press-7 --db fedmq.db
        fedmq sites forget old-press-7 --db fedmq.db --purge
    """
    from coordinator.store.forget import SiteLive, SiteRegistered, SiteUnknown, forget_site

    connect(db).close()  # a missing or foreign database: the read commands' one-line error
    try:
        deleted = forget_site(db, site, purge)
    except SiteUnknown:
        raise NotFound(f"no site {site!r} in {db}") from None
    except SiteLive as exc:
        raise UsageError(
            f"site {site!r} is {exc}: deregister it first (`fedmq-site deregister` on the site)"
        ) from None
    except SiteRegistered:
        raise UsageError(
            f"site {site!r} is offline but not deregistered: its retained status and "
            "registration would list it again (run `fedmq-site deregister` on the site, or "
            "clear them: see fedmq sites forget --help)"
        ) from None
    if purge:
        rows = ", ".join(f"{n} {t}" for t, n in deleted.items() if t != "sites" and n)
        click.echo(f"forgot {site} and purged its data ({rows or 'no rows'})")
    else:
        click.echo(f"forgot {site} (its data is kept: fedmq telemetry {site} --db {db})")
