"""Options shared by the ``fedmq-site`` commands, and the settings they build."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from fedmq_runtime.cli import UsageError
from fedmq_runtime.settings import SettingsError
from site_node.settings import SiteSettings, load_site_settings

__all__ = ["settings_from", "site_options"]

F = TypeVar("F", bound=Callable[..., Any])


def site_options(func: F) -> F:
    """--config plus the flags that override the most common settings."""
    options = [
        click.option(
            "--config",
            "-c",
            type=click.Path(dir_okay=False, path_type=Path),
            envvar="FEDMQ_CONFIG",
            help="Site TOML file (see `fedmq-site init`).",
        ),
        click.option("--site-id", help="Site id (topic level), e.g. detroit-press-1."),
        click.option("--host", help="Broker host."),
        click.option("--port", type=int, help="Broker port."),
        click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path)),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _prune(tree: dict[str, Any]) -> dict[str, Any]:
    # Unset flags (None) must not override the file or env, nested tables included.
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            value = _prune(value)
            if not value:
                continue
        if value is not None:
            out[key] = value
    return out


def settings_from(
    config: Path | None,
    site_id: str | None,
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    **extra: Any,
) -> SiteSettings:
    """Layer TOML < env < flags; a bad value is a one-line usage error (exit 2)."""
    flags: dict[str, Any] = {
        "site_id": site_id,
        "data_dir": data_dir,
        "mqtt": {"host": host, "port": port},
        **extra,
    }
    try:
        return load_site_settings(config, _prune(flags))
    except SettingsError as exc:
        raise UsageError(str(exc)) from None
    except Exception as exc:  # e.g. a missing site_id reported by pydantic
        raise UsageError(f"invalid settings: {exc}") from None
