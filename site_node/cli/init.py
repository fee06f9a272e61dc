"""``fedmq-site init``: write a commented example site config."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["EXAMPLE", "init"]

EXAMPLE = """\
# fedmq site node configuration. Every key can also be set as an environment variable
# (FEDMQ_SITE_ID, FEDMQ_MQTT__HOST, FEDMQ_OUTBOX__MAX_ROWS, ...) and the important ones
# as flags; precedence: this file < environment < flags.

site_id = "{site_id}"                  # [a-z0-9][a-z0-9_-]{{0,63}}: a topic level
name = "Press line 1"
data_dir = "fedmq-site-data"          # outbox.db, state.json, commands.db
heartbeat_interval_s = 10
# coordinator_public_key_file = "coordinator.pub"   # pin it to accept signed commands

hierarchy = {{ enterprise = "acme", site = "detroit", area = "stamping", line = "line-1" }}
# location = {{ lat = 42.33, lon = -83.05 }}
labels = {{ team = "maintenance" }}

batch_max_samples = 100               # a telemetry message per device per 100 samples...
batch_max_wait_s = 1.0                # ...or per second, whichever comes first

[mqtt]
host = "127.0.0.1"
port = 1883
protocol = "5"                        # "5" or "3.1.1"
keepalive = 30
prefix = "fedmq/v1"
# username = "{site_id}"
# password_file = "/run/secrets/mqtt-password"   # or FEDMQ_MQTT__PASSWORD; never logged
# tls = true                          # port 8883 in production
# ca_file = "ca.crt"
# cert_file = "{site_id}.crt"         # client certificate (mTLS)
# key_file = "{site_id}.key"
# tls_insecure = false                # never on a plant network

[outbox]
max_rows = 200000
max_bytes = 268435456                 # 256 MiB
max_age_s = 604800                    # 7 days
policy = "drop_oldest"                # or "drop_newest"; job results are never dropped
ack_timeout_s = 30                    # re-send rows not acked within this time
replay_rate = 2000                    # rows/s replayed after an outage
inflight_window = 1000                # QoS 1 publishes in flight at once
synchronous = "FULL"                  # "NORMAL" is faster but may lose rows on power loss

[log]
# file = "fedmq-site.log"
format = "text"                       # or "json"
verbose = false

# The host's own health.
[[devices]]
name = "host"
source = "system"
interval_s = 10

# Replay of a C-MAPSS trajectory (the demo's sensor).
# [[devices]]
# name = "engine"
# source = "file"
# path = "train_FD001.txt"
# preset = "cmapss"
# rate_hz = 10
# loop = true

# A serial sensor sending CSV lines "21.5,3.2".
# [[devices]]
# name = "press-1"
# source = "serial"
# port = "/dev/ttyUSB0"
# baud = 9600
# format = "csv"
# columns = [{{ name = "temp", unit = "C" }}, {{ name = "vib", unit = "mm/s" }}]
"""


@click.command()
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), help="File to write.")
@click.option("--site-id", default="press-1", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing --out file.")
def init(out: Path | None, site_id: str, force: bool) -> None:
    """Write a commented example site config to stdout or --out.

    \b
    Example:
        fedmq-site init --site-id detroit-press-1 --out site.toml
    """
    text = EXAMPLE.format(site_id=site_id)
    if out is None:
        click.echo(text, nl=False)
        return
    if out.exists() and not force:
        raise click.ClickException(f"{out} exists (use --force to overwrite)")
    out.write_text(text)
    click.echo(f"wrote {out}", err=True)
