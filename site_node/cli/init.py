"""``fedmq-site init``: write a commented example site config.

The template shows every device option (``tests/test_site_init_template.py`` checks it
against the config models, so a new option without a line here fails). Explanations are
``##`` comments; ``# key = value`` lines are settings to uncomment.
"""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["EXAMPLE", "init", "render"]

EXAMPLE = """\
## fedmq site node configuration. Every key can also be set as an environment variable
## (FEDMQ_SITE_ID, FEDMQ_MQTT__HOST, FEDMQ_OUTBOX__MAX_ROWS, ...) and the important ones
## as flags; precedence: this file < environment < flags. Lines "# key = value" are
## settings to uncomment; "##" lines explain.

site_id = "<site_id>"                  ## [a-z0-9][a-z0-9_-]{0,63}: a topic level
name = "Press line 1"
data_dir = "fedmq-site-data"          ## outbox.db, state.json, commands.db
heartbeat_interval_s = 10
# coordinator_public_key_file = "coordinator.pub"   ## pin it to accept signed commands

hierarchy = { enterprise = "acme", site = "detroit", area = "stamping", line = "line-1" }
# location = { lat = 42.33, lon = -83.05 }
labels = { team = "maintenance" }

batch_max_samples = 100               ## a telemetry message per device per 100 samples...
batch_max_wait_s = 1.0                ## ...or per second, whichever comes first

[mqtt]
host = "127.0.0.1"
port = 1883
protocol = "auto"                     ## MQTT 5, else 3.1.1 (RabbitMQ, NATS); or "5", "3.1.1"
keepalive = 30
prefix = "fedmq/v1"
# username = "<site_id>"
# password_file = "/run/secrets/mqtt-password"   ## or FEDMQ_MQTT__PASSWORD; never logged
# tls = true                          ## port 8883 in production
# ca_file = "ca.crt"
# cert_file = "<site_id>.crt"         ## client certificate (mTLS)
# key_file = "<site_id>.key"
# tls_insecure = false                ## never on a plant network

[outbox]
max_rows = 200000
max_bytes = 268435456                 ## 256 MiB
max_age_s = 604800                    ## 7 days
policy = "drop_oldest"                ## or "drop_newest"; job results are never dropped
ack_timeout_s = 30                    ## re-send rows not acked within this time
replay_rate = 2000                    ## rows/s replayed after an outage
inflight_window = 1000                ## QoS 1 publishes in flight at once
synchronous = "FULL"                  ## "NORMAL" is faster but may lose rows on power loss

[log]
# file = "fedmq-site.log"
format = "text"                       ## or "json"
verbose = false

## ---- devices: each [[devices]] table is one device, "name" its topic level ----------

## The host's own health (psutil).
[[devices]]
name = "host"
source = "system"
interval_s = 10                       ## seconds between samples
disk_path = "/"                       ## the disk of disk_percent (Windows: "C:\\\\")
publish = "raw"                       ## raw: every sample | summary: min/mean/max/count
# summary_window_s = 60               ## per window (publish = "summary") | none: stays here
# metrics = [                         ## default: all of them
#   "cpu_percent", "mem_percent", "swap_percent", "disk_percent", "load1", "load5",
#   "load15", "net_bytes_sent", "net_bytes_recv", "disk_read_bytes", "disk_write_bytes",
#   "process_count", "uptime_s",
# ]

## Replay of a C-MAPSS trajectory (the demo's sensor): engines 1-25, 10 rows/s.
# [[devices]]
# name = "engine"
# source = "file"
# path = "train_FD001.txt"
# preset = "cmapss"                   ## names the 26 columns with their units
# format = "whitespace"               ## or "csv" (then delimiter)
# rate_hz = 10                        ## rows per second
# loop = true                         ## start again at the end (not with timestamp_column)
# include = { unit = { min = 1, max = 25 } }   ## or { unit = [1, 2, 3] }: rows to keep
# exclude = ["op_setting_1", "op_setting_2", "op_setting_3"]   ## columns not to send

## A plant's CSV export with its own times and one row per machine and hour:
##   datetime,machineID,volt,rotate,pressure,vibration
##   2015-01-01 06:00:00,1,176.2,418.5,113.1,45.1
## becomes devices "pdm-1", "pdm-2", ... (one per machineID) whose samples keep the
## recorded 2015 times and are flagged historical. Replay pace is still rate_hz rows/s
## (for the whole file: 100 rows/s over 4 machines is 25 rows/s each). The coordinator
## keeps historical samples for its retention (default 90 days) counted from when they
## arrived, not from their recorded times.
# [[devices]]
# name = "pdm"
# source = "file"
# path = "PdM_telemetry.csv"
# format = "csv"
# delimiter = ","
# header = true                       ## first line names the columns: read them by name
# columns = [                         ## the columns to send, by header name
#   { name = "volt", unit = "V" },
#   { name = "rotate", unit = "rpm" },
#   { name = "pressure", unit = "psi" },
#   { name = "vibration", unit = "mm/s" },
# ]
# timestamp_column = "datetime"       ## keep the recorded time instead of the replay time
# timestamp_format = "iso"            ## iso | epoch_s | epoch_ms | strftime ("%d.%m.%Y %H:%M")
# timezone = "UTC"                    ## for times without an offset ("Europe/Berlin", ...)
# device_column = "machineID"         ## one device per value: pdm-1, pdm-2, ...
# max_devices = 128                   ## rows of further machine ids are dropped (at most 256)
# rate_hz = 100
# publish = "raw"
# summary_window_s = 60

## A serial sensor sending CSV lines "21.5,3.2" (Windows: port = "COM3").
# [[devices]]
# name = "press-1"
# source = "serial"
# port = "/dev/ttyUSB0"
# baud = 9600
# bytesize = 8
# parity = "none"                     ## none | even | odd | mark | space
# stopbits = 1                        ## 1, 1.5 or 2
# timeout_s = 0.5                     ## read timeout (how fast stop is noticed)
# exclusive = true                    ## lock the port against a second reader
# format = "csv"
# delimiter = ","                     ## " " splits on any whitespace
# columns = [{ name = "ts" }, { name = "temp", unit = "C" }, { name = "vib", unit = "mm/s" }]
# timestamp_column = "ts"             ## the device's own epoch time...
# timestamp_unit = "ms"               ## ...in "s" or "ms"; without it: time of receipt
# exclude = []                        ## columns read but not sent
# encoding = "utf-8"
# max_line_bytes = 4096               ## a longer line is malformed
# reopen_min_s = 0.5                  ## reopen backoff after the port vanished...
# reopen_max_s = 30
# idle_reopen_s = 60                  ## ...or after this long without a line
# publish = "summary"                 ## a 100 Hz vibration sensor: send 10 s summaries
# summary_window_s = 10

## A serial device sending JSON lines {"temp": 21.5, "rpm": 1480}.
# [[devices]]
# name = "oven-2"
# source = "serial"
# port = "/dev/ttyACM0"
# baud = 115200
# format = "json"
# units = { temp = "C", rpm = "rpm" }

## ---- training: only on sites that train (loads torch/syft; pip install 'fedmq[train]')

# [training]
# tasks_dir = "tasks"                 ## the site's own tasks (*.py, *.toml): docs/tasks.md
# allow = ["cmapss-rul"]              ## tasks it runs; "name@<hash>" pins exact code
# pins = {}                           ## name -> hash (allow's "@<hash>" entries land here)
# approval = "manual"                 ## or "auto": run approved jobs without asking
# max_concurrent_jobs = 1
# worker_idle_s = 180                 ## the training worker exits after this idle time
# memory_limit_mb = 2048              ## a job past this fails (default: half the RAM, <= 2048)
# nice = 10
# threads = 2                         ## torch threads (default: half the cores)
# chunk_bytes = 262144                ## weights above this travel in chunks
# chunk_timeout_s = 60
# max_buffered_bytes = 268435456
# progress_interval_s = 2
# max_refusal_reports_per_min = 30
#
# [[training.datasets]]
# name = "fd001-west"
# task = "cmapss-rul"
# paths = ["train_FD001.txt"]
# params = { units = [1, 2, 3] }
#
# [[training.datasets]]               ## or train on the site's own telemetry history:
# name = "engine-history"
# task = "cmapss-rul"
# history = { devices = ["engine"], since_days = 30 }

## ---- history: every device's samples, kept at the site (training, export) -----------

# [history]
# enabled = true                      ## off: no history (publish = "none" then refused)
# max_age_days = 30                   ## by when the site stored them (replays kept)
# max_bytes = 1073741824              ## 1 GiB; the oldest are pruned past it
# flush_interval_s = 1                ## a kill -9 loses at most this long of samples
# max_pending = 50000                 ## beyond: dropped and counted, never slowing sources
# prune_interval_s = 60
# synchronous = "NORMAL"              ## or "FULL" (survives power loss)

## ---- scoring: a model deployed here (fedmq deploy) scores live telemetry (docs/scoring.md)

# [scoring]
# rules = ["rul < 30 for 3 windows"]  ## alarm rules when a deployment declares none
# max_windows = 1000                  ## devices whose recent readings are kept and scored
# memory_limit_mb = 1024              ## the scoring process is restarted past this
# nice = 10
# threads = 1                         ## torch threads of the scoring process
# score_timeout_s = 30                ## a round that takes longer restarts the process
# load_timeout_s = 120                ## loading the task and weights (imports torch)
"""


def render(site_id: str) -> str:
    """The template for ``site_id``."""
    return EXAMPLE.replace("<site_id>", site_id)


@click.command()
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), help="File to write.")
@click.option("--site-id", default="press-1", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing --out file.")
def init(out: Path | None, site_id: str, force: bool) -> None:
    """Write a commented example site config to stdout or --out.

    It shows every device option: the host's metrics, file replay (C-MAPSS preset, a CSV
    with a header, recorded timestamps and one device per machine), serial CSV and JSON
    lines, and a commented [training] section. Uncomment what you need.

    \b
    Example:
        fedmq-site init --site-id detroit-press-1 --out site.toml
        fedmq-site doctor --config site.toml
    """
    text = render(site_id)
    if out is None:
        click.echo(text, nl=False)
        return
    if out.exists() and not force:
        raise click.ClickException(f"{out} exists (use --force to overwrite)")
    out.write_text(text)
    click.echo(f"wrote {out}", err=True)
