"""The in-process datasite's two accounts: the site admin and the coordinator's user.

syft creates its root account with a well-known default password; at first start a random
one replaces it, stored with mode 0600 next to syft's state. The coordinator's jobs are
submitted by a separate data-scientist account (its password file likewise), so approving
stays the admin's act.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["DS_EMAIL", "ROOT_EMAIL", "login_admin", "login_data_scientist", "quiet"]

log = logging.getLogger(__name__)

ROOT_EMAIL = "info@openmined.org"  # syft's root account; only its password is ours
DS_EMAIL = "coordinator@fedmq.example.com"
_SYFT_DEFAULT_PASSWORD = "changethis"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Capture what syft prints (progress, banners): the site's stdout stays clean."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield
    if buf.getvalue().strip():
        log.debug("syft: %s", buf.getvalue().strip()[:500])


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    os.chmod(path, 0o600)


def login_admin(handle: Any, pw_file: Path) -> Any:
    """The admin client; at first start, set a generated password in place of syft's.

    Raises:
        PermissionError: the stored password does not work and the default is gone.
    """
    if pw_file.exists():
        with contextlib.suppress(Exception), quiet():
            return handle.login(email=ROOT_EMAIL, password=pw_file.read_text())
    # First start, or a crash between saving the password and setting it.
    password = secrets.token_urlsafe(24)
    _write_secret(pw_file, password)
    try:
        with quiet():
            admin = handle.login(email=ROOT_EMAIL, password=_SYFT_DEFAULT_PASSWORD)
            admin.account.set_password(password, confirm=False)
            return handle.login(email=ROOT_EMAIL, password=password)
    except Exception as exc:
        raise PermissionError(f"cannot log in as the datasite admin: {exc}") from exc


def login_data_scientist(handle: Any, admin: Any, pw_file: Path) -> Any:
    """The coordinator's (non-admin) client, creating the account on first use."""
    if pw_file.exists():
        with contextlib.suppress(Exception), quiet():
            return handle.login(email=DS_EMAIL, password=pw_file.read_text())
    password = secrets.token_urlsafe(24)
    _write_secret(pw_file, password)
    with quiet():
        existing = [u for u in admin.users.get_all() if u.email == DS_EMAIL]
        if existing:  # password file lost: reset the account's password
            admin.users.update(uid=existing[0].id, password=password)
        else:
            admin.users.create(
                name="fedmq coordinator", email=DS_EMAIL, password=password,
                password_verify=password, role=_data_scientist_role(),
            )  # fmt: skip
        return handle.login(email=DS_EMAIL, password=password)


def _data_scientist_role() -> Any:
    from syft.service.user.user_roles import ServiceRole

    return ServiceRole.DATA_SCIENTIST
