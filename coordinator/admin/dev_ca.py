"""A development certificate authority: server and client certificates for TLS/mTLS.

For trials and tests. In production use the plant's PKI with the same conventions:
server certificate SANs cover every name clients dial, client certificate CN = site id
(or the coordinator's username), because ``use_identity_as_username`` turns it into the
MQTT username the ACL applies to. Keys are ECDSA P-256 (fast, accepted by every TLS stack
Mosquitto and paho build against); private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator.admin.signing import write_private

__all__ = [
    "DEFAULT_SERVER_HOSTS",
    "CertificateAuthority",
    "DevCaError",
]

log = logging.getLogger(__name__)

DEFAULT_SERVER_HOSTS = ("localhost", "127.0.0.1", "::1")
_CA_DAYS = 3650
_LEAF_DAYS = 825  # the longest validity Apple/Chrome accept for TLS server certificates


class DevCaError(ValueError):
    """CA files are missing or unreadable (one line, for the CLI)."""


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedmq development"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private(path, pem)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA certificate and its key, able to issue server and client certificates."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, cn: str = "fedmq development CA") -> CertificateAuthority:
        """A new self-signed CA (10 years)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        """Load a CA written by :meth:`save`.

        Raises:
            DevCaError: a file is missing, malformed or not an EC key.
        """
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise DevCaError(f"cannot load the CA from {cert_path} / {key_path}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise DevCaError(f"not an EC private key: {key_path}")
        return cls(cert, key)

    def save(self, cert_path: Path, key_path: Path) -> None:
        """Write the CA certificate and its key (0600)."""
        _write_cert(cert_path, self.cert)
        _write_key(key_path, self.key)
        log.info("wrote CA certificate %s and key %s", cert_path, key_path)

    def write_ca_cert(self, path: Path) -> None:
        """Write only the CA certificate (what clients and the broker trust)."""
        _write_cert(path, self.cert)

    def _issue(
        self,
        cn: str,
        usage: x509.ObjectIdentifier,
        sans: Sequence[str],
        cert_path: Path,
        key_path: Path,
    ) -> x509.Certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=_LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if sans:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_san(h) for h in dict.fromkeys(sans)]), False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        _write_cert(cert_path, cert)
        _write_key(key_path, key)
        log.info("issued certificate CN=%s: %s", cn, cert_path)
        return cert

    def issue_server(
        self, cert_path: Path, key_path: Path, hosts: Sequence[str] = ()
    ) -> x509.Certificate:
        """A broker certificate valid for localhost, 127.0.0.1, ::1 and ``hosts``."""
        sans = [*DEFAULT_SERVER_HOSTS, *hosts]
        return self._issue(
            hosts[0] if hosts else "localhost",
            ExtendedKeyUsageOID.SERVER_AUTH,
            sans,
            cert_path,
            key_path,
        )

    def issue_client(self, cn: str, cert_path: Path, key_path: Path) -> x509.Certificate:
        """A client certificate whose CN becomes the MQTT username under mTLS."""
        return self._issue(cn, ExtendedKeyUsageOID.CLIENT_AUTH, (), cert_path, key_path)
