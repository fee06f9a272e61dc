"""``fedmq deploy``: put a trained model to work at sites (or roll back); ``fedmq
deployments``: which version runs where and since when."""

from __future__ import annotations

import getpass
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from coordinator.cli.output import connect, db_option, fmt_ts, table

__all__ = ["deploy", "deployments"]

# A site is done with a deployment in these states (pending_approval waits for a person).
_FINAL = ("active", "rejected", "failed", "replaced")


@click.command()
@click.argument("model_version", required=False)
@click.option("--sites", metavar="A,B", help="Comma-separated site ids.")
@click.option("--all", "all_sites", is_flag=True,
              help="Every registered site that advertises the model's task code (the others "
                   "are listed as skipped).")  # fmt: skip
@click.option("--cadence", type=click.FloatRange(0.1, 86_400), metavar="S",
              help="Score each covered device's window every S seconds [10; a rollback: the "
                   "previous deployment's].")  # fmt: skip
@click.option("--rule", "rules", multiple=True, metavar="RULE",
              help='Alarm rule, e.g. "rul < 30" or "p_fail > 0.8 for 3 windows" (repeat; at '
                   "most 16). A rule the site cannot parse rejects the deployment.")  # fmt: skip
@click.option(
    "--device",
    "devices",
    multiple=True,
    metavar="D",
    help="Score only this device (repeat) [every device the site streams].",
)
@click.option("--expires", type=click.FloatRange(1, 7 * 86_400), default=600.0,
              show_default=True, metavar="S",
              help="The command expires S seconds after it is sent.")  # fmt: skip
@click.option("--wait", type=click.FloatRange(min=0), default=0.0, metavar="S",
              help="Follow the sites' statuses up to S seconds, until each is active, "
                   "rejected or failed.")  # fmt: skip
@click.option(
    "--rollback",
    is_flag=True,
    help="Return each site to the version that was active before the current one.",
)
@click.option("--by", "requested_by", help="Who asks, for the record [the OS user].")
@click.option("--api", help="Control API URL [announced by serve in --db].")
@click.option("--token-file", type=click.Path(path_type=Path), help="API token [DB.token].")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def deploy(
    model_version: str | None, sites: str | None, all_sites: bool, cadence: float | None,
    rules: tuple[str, ...], devices: tuple[str, ...], expires: float, wait: float,
    rollback: bool, requested_by: str | None, api: str | None, token_file: Path | None,
    db: Path, as_json: bool,
) -> None:  # fmt: skip
    """Deploy MODEL_VERSION (see `fedmq models`) to sites: they score their live telemetry
    with it and raise alarms by the rules.

    `fedmq serve` sends each site a signed deploy command (expiring after --expires) with
    the model's task, the code hash of the run that trained it and the weights (chunked,
    sha256-verified). Each site applies its own policy: its allow-list must pin that task
    and code hash, and in manual approval mode it waits for `fedmq-site approve`. A site
    reports accepted, pending_approval, active, rejected or failed (with the reason); see
    `fedmq deployments` and `fedmq events`.

    Refused before anything is sent: an unknown model, an unknown or deregistered site, a
    site that does not advertise the model's task code hash (the message names the hash
    it has), a daemon without a signing key. Named sites are all or nothing.

    --rollback redeploys, per site, the version that was active before the current one,
    with that deployment's cadence, rules and devices (unless given).

    Exit codes: 0 sent (with --wait: every site active), 2 bad request or no signing key,
    3 unknown model, 4 broker unreachable, 5 refused, or with --wait a site rejected,
    failed or did not finish in time.

    \b
    Example:
        fedmq deploy run-20250101-120000-ab12-r5 --sites press-1,press-2 --wait 60
        fedmq deploy run-20250101-120000-ab12-r5 --all --cadence 30 --rule "rul < 30"
        fedmq deploy run-20250101-120000-ab12-r5 --sites press-1 --device engine-7 \\
            --rule "p_fail > 0.8 for 3 windows" --json
        fedmq deploy --rollback --sites press-1 --wait 60
    """
    from coordinator.api.client import ApiClient, ApiError
    from coordinator.api.token import read_token, token_path
    from coordinator.cli import EXIT
    from coordinator.cli.train import _api_url

    if rollback and model_version:
        raise click.UsageError("--rollback redeploys each site's previous version: no MODEL")
    if not rollback and not model_version:
        raise click.UsageError("MODEL_VERSION is required (see `fedmq models`), or --rollback")
    names = [s.strip() for s in (sites or "").split(",") if s.strip()]
    if bool(names) == all_sites:
        raise click.UsageError("give --sites A,B or --all")
    body: dict[str, Any] = {
        "model": model_version, "rollback": rollback, "expires_s": expires,
        "requested_by": requested_by or getpass.getuser(),
    }  # fmt: skip
    if all_sites:
        body["all"] = True
    else:
        body["sites"] = names
    if cadence is not None:
        body["cadence_s"] = cadence
    if rules:
        body["rules"] = list(rules)
    if devices:
        body["devices"] = list(devices)
    token_at = token_file or token_path(db)
    token = read_token(token_at)
    if token is None:
        if token_file is None and not db.is_file():
            click.echo(f"Error: no database at {db}: start the coordinator with "
                       f"`fedmq serve --db {db}`", err=True)  # fmt: skip
            sys.exit(EXIT["not_found"])
        click.echo(f"Error: no API token at {token_at}: start `fedmq serve --db {db}` "
                   "(it writes one), or give --token-file", err=True)  # fmt: skip
        sys.exit(EXIT["usage"])
    client = ApiClient(api or _api_url(db), token)
    try:
        out = client.deploy(body)
        if not as_json:
            _summary(out)
        final = _follow(client, out["sites"], wait, as_json) if wait else []
    except ApiError as exc:
        click.echo(f"Error: {exc}", err=True)
        if exc.status == 0:
            click.echo(f"  is `fedmq serve --db {db}` running?", err=True)
        code = {400: "usage", 401: "usage", 404: "not_found", 409: "failed", 503: "broker"}
        sys.exit(EXIT[code.get(exc.status, "failed" if exc.status == 0 else "error")])
    if as_json:
        click.echo(json.dumps({**out, "final": final}, indent=2, default=str))
    sent = [s for s in out["sites"] if s["outcome"] == "sent"]
    failed = [s for s in out["sites"] if s["outcome"] == "failed"]
    if failed:
        sys.exit(EXIT["failed"])
    if wait and (len(final) < len(sent) or any(f["state"] != "active" for f in final)):
        sys.exit(EXIT["failed"])


def _summary(out: dict[str, Any]) -> None:
    """What was sent where, and the sites skipped or not published, with the reason."""
    for dep in out["deployments"]:
        what = "rollback to" if dep["rollback"] else "deployment of"
        chunks = f", {dep['chunks']} chunks" if dep["chunks"] else ""
        click.echo(f"{dep['deployment_id']}: {what} {dep['model_version']} "
                   f"({dep['task']}, every {dep['cadence_s']:g} s{chunks}) to "
                   f"{', '.join(dep['sites'])}")  # fmt: skip
    for s in out["sites"]:
        if s["outcome"] != "sent":
            click.echo(f"  {s['site']:<16} {s['outcome']}: {s['reason']}")


def _follow(
    client: Any, sites: list[dict[str, Any]], wait: float, as_json: bool
) -> list[dict[str, Any]]:
    """Poll each sent site's status until it is final or ``wait`` ends; print one line per
    site as it gets there (and one for each still waiting at the end)."""
    pending = {(s["site"], s["deployment_id"]) for s in sites if s["outcome"] == "sent"}
    done: list[dict[str, Any]] = []
    deadline = time.monotonic() + wait
    last: dict[tuple[str, str], dict[str, Any]] = {}
    while pending:
        for dep in sorted({d for _, d in pending}):
            for row in client.deployment(dep):
                key = (row["site"], dep)
                if key not in pending:
                    continue
                last[key] = row
                if row["state"] in _FINAL or row.get("expired"):  # expired: it never will
                    pending.discard(key)
                    done.append(row)
                    if not as_json:
                        click.echo(_line(row))
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(min(0.5, max(deadline - time.monotonic(), 0.01)))
    for key in sorted(pending):
        row = last.get(key, {"site": key[0], "deployment_id": key[1], "state": "sent",
                             "reason": "", "model_version": ""})  # fmt: skip
        if not as_json:
            click.echo(_line(row) + f" (still waiting after {wait:g} s)")
    return done


def _line(row: dict[str, Any]) -> str:
    why = f": {row['reason']}" if row.get("reason") else ""
    if row.get("expired"):
        why = ": the command expired before the site answered"
    since = f" since {fmt_ts(row['since'])}" if row.get("since") else ""
    return f"  {row['site']:<16} {row['state']:<16} {row.get('model_version', '')}{since}{why}"


@click.command()
@db_option
@click.option("--site", help="Only this site.")
@click.option(
    "--all-history",
    is_flag=True,
    help="Every deployment sent to each site, oldest first, with its last state.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def deployments(db: Path, site: str | None, all_history: bool, as_json: bool) -> None:
    """Which model version runs where, and since when.

    One row per site that was ever sent a deployment: the ACTIVE version and SINCE when
    (as the site reported), its cadence and rules, and the LATEST deployment sent there
    with its state and reason (e.g. a newer version pending approval, or rejected, while
    the older one keeps scoring). Reads the database; works while `fedmq serve` runs.

    \b
    Example:
        fedmq deployments
        fedmq deployments --site press-1 --all-history
        fedmq deployments --json
    """
    reader = connect(db)
    try:
        rows = reader.deployments(site, all_history)
    finally:
        reader.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no deployments" + (f" at {site}" if site else "") +
                   " (`fedmq deploy MODEL --sites ...` sends one)")  # fmt: skip
        return
    if all_history:
        body = [
            (r["site"], r["deployment_id"], r["model_version"] + (" (rollback)" if r["rollback"]
             else ""), r["state"], fmt_ts(r["since"]), fmt_ts(r["activated_at"]),
             r["previous_version"] or "-",
             r["reason"] or ("command expired, no answer" if r["expired"] else ""))
            for r in rows
        ]  # fmt: skip
        header = ("SITE", "DEPLOYMENT", "MODEL", "STATE", "SINCE", "ACTIVATED", "BEFORE",
                  "REASON")  # fmt: skip
        click.echo(table(body, header))
        return
    body = []
    for r in rows:
        active, latest = r["active"], r["latest"]
        body.append((
            r["site"],
            active["model_version"] if active else "none",
            fmt_ts(active["activated_at"]) if active else "-",
            f"{active['cadence_s']:g} s" if active and active["cadence_s"] else "-",
            "; ".join(active["rules"]) if active and active["rules"] else "-",
            latest["deployment_id"],
            f"{latest['model_version']} {latest['state']}",
            latest["reason"] or ("command expired, no answer" if latest["expired"] else ""),
        ))  # fmt: skip
    header = ("SITE", "ACTIVE", "SINCE", "CADENCE", "RULES", "LATEST", "LATEST STATE",
              "REASON")  # fmt: skip
    click.echo(table(body, header))
