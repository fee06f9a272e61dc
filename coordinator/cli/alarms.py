"""``fedmq alarms``: the current state of every alarm; ``fedmq alarms ack ID``."""

from __future__ import annotations

import getpass
from pathlib import Path

import click

from coordinator.cli.output import connect, db_option, echo_json, fmt_ts, table
from fedmq_runtime.cli import NotFound

__all__ = ["alarms"]


@click.group(invoke_without_command=True)
@db_option
@click.option("--active", is_flag=True, help="Only alarms active now.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def alarms(ctx: click.Context, db: Path, active: bool, as_json: bool) -> None:
    """List the alarms the sites raised: one row per site, device and alarm rule with its
    current state, the most recently changed first.

    A site publishes an alarm's state retained on P/site/SITE/alarm/DEVICE (active or
    cleared, severity, the rule, the value, the model version, since when); every
    transition is also an event (`fedmq events`). ACK shows who acknowledged it and when.

    \b
    Example:
        fedmq alarms --active
        fedmq alarms --json
        fedmq alarms ack 3 --by alice
    """
    ctx.obj = db  # `fedmq alarms --db X ack ID` acks in X
    if ctx.invoked_subcommand is not None:
        return
    reader = connect(db)
    rows = reader.alarms(active)
    reader.close()
    if as_json:
        echo_json(rows)
        return
    body = [
        (a["id"], a["site"], a["device"], a["alarm_id"], a["state"], a["severity"], a["rule"],
         "" if a["value"] is None else f"{a['value']:g}", a["model_version"], fmt_ts(a["since"]),
         f"{a['acked_by']} {fmt_ts(a['acked_at'])}" if a["acked_by"] else "")
        for a in rows
    ]  # fmt: skip
    header = ("ID", "SITE", "DEVICE", "ALARM", "STATE", "SEVERITY", "RULE", "VALUE", "MODEL",
              "SINCE", "ACK")  # fmt: skip
    click.echo(table(body, header))


@alarms.command("ack")
@click.argument("alarm_id", type=int)
@db_option
@click.option("--by", help="Who acknowledges it (default: the OS user).")
@click.pass_context
def ack(ctx: click.Context, alarm_id: int, db: Path, by: str | None) -> None:
    """Acknowledge alarm ALARM_ID (the ID column of `fedmq alarms`): records who and when,
    and an `alarm_acked` event. Safe while `fedmq serve` runs (one short transaction).

    \b
    Example:
        fedmq alarms ack 3
        fedmq alarms ack 3 --by "alice (shift B)"
    """
    from coordinator.store.alarm_ack import AlarmUnknown, ack_alarm

    if ctx.get_parameter_source("db") is click.core.ParameterSource.DEFAULT and ctx.obj:
        db = ctx.obj  # the group's --db (or FEDMQ_DB)
    connect(db).close()  # a missing or foreign database: the read commands' one-line error
    who = by or getpass.getuser()
    try:
        row = ack_alarm(db, alarm_id, who)
    except AlarmUnknown:
        raise NotFound(f"no alarm {alarm_id} in {db} (see `fedmq alarms`)") from None
    click.echo(
        f"alarm {alarm_id} ({row['site']} {row['device']}/{row['alarm_id']}, {row['state']}) "
        f"acknowledged by {who} at {fmt_ts(row['acked_at'])}"
    )
