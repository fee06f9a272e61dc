"""Mosquitto 2 password hashes, checked against a line written by mosquitto_passwd."""

from __future__ import annotations

import base64
import re
import stat
from pathlib import Path

import pytest

from coordinator.admin.passwords import (
    PasswordFileError,
    generate_password,
    hash_password,
    read_password_file,
    verify_password,
    write_password_file,
)

# Written by `mosquitto_passwd -c -b pw alice s3cret` (Mosquitto 2.0.11, Debian).
MOSQUITTO_PASSWD_LINE = (
    "alice:$7$101$e+6Vudvae8ucTyWW$IQ5aHg135xVsiuR8oJn7qM+3ePw8SYd0Y0+e6TL4t4nCdTFaw9Jd"
    "F0H4/FG1FaxsClAs9S6PgWbAdogUEamANA=="
)
FORMAT = re.compile(r"^\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==$")


def test_verifies_a_hash_written_by_mosquitto_passwd() -> None:
    encoded = MOSQUITTO_PASSWD_LINE.split(":", 1)[1]
    assert verify_password(encoded, "s3cret")
    assert not verify_password(encoded, "s3cret ")


def test_same_salt_reproduces_mosquitto_passwd_exactly() -> None:
    encoded = MOSQUITTO_PASSWD_LINE.split(":", 1)[1]
    salt = base64.b64decode(encoded.split("$")[3])
    assert hash_password("s3cret", salt=salt) == encoded


def test_new_hashes_have_the_mosquitto_shape_and_random_salt() -> None:
    a, b = hash_password("pw"), hash_password("pw")
    assert FORMAT.match(a) and FORMAT.match(b)
    assert a != b
    assert verify_password(a, "pw") and verify_password(b, "pw")


def test_generated_passwords_are_long_and_distinct() -> None:
    passwords = {generate_password() for _ in range(100)}
    assert len(passwords) == 100
    assert all(len(p) >= 40 and re.fullmatch(r"[A-Za-z0-9_-]+", p) for p in passwords)


def test_file_round_trip_mode_and_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    write_password_file(path, {"site-a": hash_password("x"), "coordinator": hash_password("y")})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entries = read_password_file(path)
    assert list(entries) == ["site-a", "coordinator"]
    assert verify_password(entries["site-a"], "x")
    assert read_password_file(tmp_path / "missing") == {}
    with pytest.raises(PasswordFileError):
        write_password_file(path, {"a:b": hash_password("x")})
    path.write_text("garbage line\n")
    with pytest.raises(PasswordFileError, match=":1:"):
        read_password_file(path)
    with pytest.raises(PasswordFileError):
        verify_password("$6$plain", "x")
