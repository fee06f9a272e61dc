"""The demo's site configs: each site streams and trains on its own share of FD001.

The coordinator may not import ``site_node``; the demo only needs to know where the site
package keeps its shipped copy of ``train_FD001.txt`` and finds it without importing it.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FD001_ENGINES",
    "TASK",
    "TEST_DEVICE",
    "SiteSpec",
    "engine_shares",
    "site_data_file",
    "site_toml",
    "site_train_file",
]

TASK = "cmapss-rul"
FD001_ENGINES = 100
# The file source of the FD001 test engines replayed for live scoring: one device per
# engine, ``test-<unit>`` (device_column = "unit").
TEST_DEVICE = "test"


@dataclass(frozen=True)
class SiteSpec:
    """One demo site: its id, engines and folder."""

    site_id: str
    engines: tuple[int, ...]
    workdir: Path

    @property
    def config(self) -> Path:
        return self.workdir / "site.toml"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def test_replay(self) -> Path:
        """The FD001 test rows the site replays for live scoring; the demo writes it only
        once the final model is deployed (until then the file source retries opening it)."""
        return self.workdir / "test_replay.txt"


def site_data_file(name: str) -> Path:
    """``name`` (``train_FD001.txt``, ``test_FD001.txt``, ``RUL_FD001.txt``) as shipped
    inside the installed ``site_node`` package."""
    spec = importlib.util.find_spec("site_node")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the site_node package is not installed (pip install fedmq)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / "data" / "cmapss_fd001" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall fedmq (it ships as package data)")
    return path


def site_train_file() -> Path:
    """``train_FD001.txt`` as shipped inside the installed ``site_node`` package."""
    return site_data_file("train_FD001.txt")


def engine_shares(n_sites: int, n_engines: int = FD001_ENGINES) -> list[tuple[int, ...]]:
    """Engines 1..n_engines split into ``n_sites`` contiguous, near-equal shares."""
    if not 1 <= n_sites <= n_engines:
        raise ValueError(f"cannot split {n_engines} engines across {n_sites} sites")
    base, extra = divmod(n_engines, n_sites)
    shares, start = [], 1
    for k in range(n_sites):
        size = base + (1 if k < extra else 0)
        shares.append(tuple(range(start, start + size)))
        start += size
    return shares


def _q(value: object) -> str:
    # JSON strings are valid TOML basic strings (the paths here are plain).
    return json.dumps(str(value))


def site_toml(
    site: SiteSpec,
    port: int,
    prefix: str,
    train_file: Path,
    public_key: Path,
    rate_hz: float,
    heartbeat_s: float = 2.0,
    test_rate_hz: float | None = None,
) -> str:
    """The site's TOML: live replay of its engines plus the same engines for training;
    with ``test_rate_hz`` also the FD001 test engines of ``site.test_replay`` (one device
    per engine), which the demo writes once the final model is deployed."""
    engines = ", ".join(str(u) for u in site.engines)
    plant = site.site_id.replace("site", "plant")
    span = f"{site.engines[0]}-{site.engines[-1]}"
    return f"""\
# Written by `fedmq demo`: a site holding C-MAPSS FD001 engines {span}.
site_id = {_q(site.site_id)}
name = "Demo {plant} (FD001 engines {span})"
data_dir = {_q(site.data_dir)}
heartbeat_interval_s = {heartbeat_s}
coordinator_public_key_file = {_q(public_key)}
hierarchy = {{ enterprise = "demo", site = {_q(plant)}, area = "engines" }}
labels = {{ demo = "true" }}
batch_max_samples = 200
batch_max_wait_s = 1.0

[mqtt]
host = "127.0.0.1"
port = {port}
prefix = {_q(prefix)}
keepalive = 15

[outbox]
# A demo on a laptop: crash-safe without an fsync per commit.
synchronous = "NORMAL"

# The engines replayed as live telemetry, row by row, looping.
[[devices]]
name = "engine"
source = "file"
path = {_q(train_file)}
preset = "cmapss"
rate_hz = {rate_hz}
loop = true
include = {{ unit = {{ min = {site.engines[0]}, max = {site.engines[-1]} }} }}
{_test_device(site, test_rate_hz)}
[training]
allow = [{_q(TASK)}]
approval = "auto"

[[training.datasets]]
name = {_q("fd001-" + plant)}
task = {_q(TASK)}
paths = [{_q(train_file)}]
params = {{ units = [{engines}] }}
"""


def _test_device(site: SiteSpec, rate_hz: float | None) -> str:
    if rate_hz is None:
        return ""
    return f"""
# FD001 *test* engines, replayed once for live scoring with the deployed model: one device
# per engine (test-<unit>). `fedmq demo` writes this file once the final model is active
# here; until then the source retries opening it.
[[devices]]
name = {_q(TEST_DEVICE)}
source = "file"
path = {_q(site.test_replay)}
preset = "cmapss"
device_column = "unit"
rate_hz = {rate_hz}
"""
