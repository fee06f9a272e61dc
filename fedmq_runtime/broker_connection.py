"""How both daemons log in to the broker: credentials and the TLS context, built from
:class:`~fedmq_runtime.settings.MqttSettings` with one set of rules.

paho-free on purpose (only one module per process imports paho): each bus module applies
the result to its own client with ``username_pw_set`` and ``tls_set_context``.

TLS rules: TLS 1.2 or later, the broker's certificate verified (``ca_file``, else the
system's CAs) and its host name checked unless ``tls_insecure`` (logged as a warning); a
client certificate when ``cert_file`` is set (mTLS); ``tls_insecure`` without ``tls`` is
a mistake, not a no-op.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

from fedmq_runtime.settings import MqttSettings, SettingsError

__all__ = ["ConnectionOptions", "connection_options"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionOptions:
    """What a client needs besides host and port; ``tls`` None means plain TCP."""

    username: str | None
    password: str | None
    tls: ssl.SSLContext | None


def _tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    if not settings.tls:
        if settings.tls_insecure:
            raise SettingsError("mqtt.tls_insecure is set but mqtt.tls is not")
        return None
    # PROTOCOL_TLS_CLIENT: certificate required and host name checked by default.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if settings.cert_file is not None:
            key = str(settings.key_file) if settings.key_file else None
            context.load_cert_chain(str(settings.cert_file), key)
        if settings.ca_file is not None:
            context.load_verify_locations(str(settings.ca_file))
        else:
            context.load_default_certs()
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise SettingsError(f"TLS setup failed (ca/cert/key files): {exc}") from None
    if settings.tls_insecure:
        log.warning("TLS hostname verification is DISABLED (mqtt.tls_insecure = true)")
        context.check_hostname = False
    return context


def connection_options(settings: MqttSettings) -> ConnectionOptions:
    """Credentials and TLS context for ``settings``.

    Raises:
        SettingsError: unreadable password file, TLS files that do not load, or
            ``tls_insecure`` without ``tls`` (one line, for the CLI).
    """
    password = settings.resolved_password() if settings.username is not None else None
    return ConnectionOptions(settings.username, password, _tls_context(settings))
