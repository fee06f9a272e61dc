"""Bringing the demo federation up: broker, coordinator, then N site processes."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from coordinator.demo.broker import start_broker
from coordinator.demo.console import Console
from coordinator.demo.options import DemoLayout, DemoOptions
from coordinator.demo.procs import Child, Supervisor
from coordinator.demo.readiness import wait_for_db, wait_for_sites
from coordinator.demo.sites import SiteSpec, engine_shares, site_toml, site_train_file

__all__ = ["Federation", "child_env", "start_federation"]


def _fedmq_argv(script: str, module: str) -> list[str]:
    # The console script installed next to this interpreter, else the same entry point
    # through ``python -c`` (a checkout run without installing).
    candidate = Path(sys.executable).parent / script
    if candidate.exists():
        return [str(candidate)]
    return [sys.executable, "-c", f"from {module} import main; main()"]


def child_env() -> dict[str, str]:
    """The children's environment: the user's, without ``FEDMQ_...`` overrides."""
    # The demo's generated configs are the whole truth: a FEDMQ_... variable of the
    # user's shell would override them in the children.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMQ_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Federation:
    """The running demo processes and the broker port they share."""

    def __init__(
        self,
        port: int,
        coordinator: Child,
        sites: dict[str, Child],
        specs: dict[str, SiteSpec] | None = None,
    ) -> None:
        self.port = port
        self.coordinator = coordinator
        self.sites = sites
        self.specs = specs or {}


def start_federation(
    opts: DemoOptions, layout: DemoLayout, supervisor: Supervisor, console: Console
) -> Federation:
    """Start everything and wait until every site is live and advertises the task.

    Raises:
        coordinator.demo.broker.BrokerMissing: no mosquitto.
        coordinator.demo.readiness.StartupFailed: a child exited or was not ready in time.
    """
    from coordinator.admin.signing import generate_keypair

    started = time.monotonic()
    port = start_broker(layout.root / "broker", layout.logs, supervisor)
    console.line(f"broker       mosquitto on 127.0.0.1:{port}")
    generate_keypair(layout.private_key, layout.public_key)
    serve = supervisor.spawn(
        "coordinator",
        [
            *_fedmq_argv("fedmq", "coordinator.cli"), "serve", "--db", str(layout.db),
            "--port", str(port), "--prefix", opts.prefix,
            "--signing-key", str(layout.private_key), "--http", "127.0.0.1:0",
        ],
        layout.logs / "coordinator.log",
        layout.root,
    )  # fmt: skip
    wait_for_db(layout.db, serve, timeout=60)
    console.line(f"coordinator  fedmq serve --db {layout.db}")
    train_file = site_train_file()
    sites: dict[str, Child] = {}
    specs: dict[str, SiteSpec] = {}
    test_rate = opts.score_rate_hz if opts.score_engines > 0 else None
    for k, engines in enumerate(engine_shares(opts.sites, opts.engines), start=1):
        spec = SiteSpec(f"site-{k}", engines, layout.site_dir(f"site-{k}"))
        spec.workdir.mkdir(parents=True, exist_ok=True)
        spec.config.write_text(
            site_toml(
                spec,
                port,
                opts.prefix,
                train_file,
                layout.public_key,
                opts.rate_hz,
                test_rate_hz=test_rate,
            )
        )
        specs[spec.site_id] = spec
        sites[spec.site_id] = supervisor.spawn(
            spec.site_id,
            [*_fedmq_argv("fedmq-site", "site_node.cli"), "run", "--config", str(spec.config)],
            layout.logs / f"{spec.site_id}.log",
            spec.workdir,
        )
        console.line(
            f"site         {spec.site_id}: FD001 engines {engines[0]}-{engines[-1]}, "
            f"fedmq-site run --config {spec.config}"
        )
    console.line(f"logs         {layout.logs}/")
    console.line(
        f"waiting for {opts.sites} sites to be live with task {opts.task} "
        "(each starts a PySyft datasite: 15-45 s) ..."
    )

    def progress(states: dict[str, str], elapsed: float) -> None:
        live = sum(1 for s in states.values() if s == "live")
        detail = "  ".join(f"{site} {state}" for site, state in states.items())
        console.status(f"  {live}/{len(states)} live  {elapsed:4.0f}s  {detail}", key=detail)

    wait_for_sites(layout.db, sites, opts.task, opts.start_timeout_s, progress)
    console.line(f"all {opts.sites} sites live after {time.monotonic() - started:.0f} s")
    return Federation(port, serve, sites, specs)
