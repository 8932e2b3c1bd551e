"""Who may use ``imtel engine``: the one user's password (given in a file or generated into a 0600
token file), the Host and Origin checks, and TLS.

Every check here runs on the request head, before a byte of the body is read, so that a client
without the password, or a web page reaching the engine through a browser, costs almost nothing.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import os
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.dev.engine.protocol import EngineError

TOKEN_FILE = "engine.token"  # in the store folder: the generated password of ``imtel engine``
_LOOPBACK_NAMES = frozenset({"localhost"})


def read_password(path: Path) -> str:
    """The password in ``path`` (one line). ValueError: unreadable or empty, said in one sentence."""
    try:
        password = path.read_text().strip("\r\n")
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if not password:
        raise ValueError(f"{path} is empty: it must hold the password")
    return password


def load_or_create_token(path: Path) -> str:
    """The token in ``path``, created (mode 0600, 256 random bits) when missing. Kept across
    restarts, so clients pointed at the file keep working; refused when others may read it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            raise ValueError(f"{path} may be read by other users: chmod 600 it (or delete it for a new "
                             "token)") from None
        return read_password(path)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1 (names other than localhost are not resolved)."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(header: str) -> str:
    """The host part of a ``Host`` header value (``[::1]:8123`` -> ``::1``, ``a:80`` -> ``a``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


@dataclass(frozen=True)
class Access:
    """Who may use the server: the one user and password, the Host values accepted besides
    loopback ones (a name or address clients use to reach a non-loopback bind), and TLS."""

    password: str
    user: str = "default"
    hosts: frozenset[str] = frozenset()
    tls: ssl.SSLContext | None = None
    password_file: Path | None = None  # told to our own clients through the ready file

    @classmethod
    def from_files(cls, password_file: Path, *, generate: bool, user: str = "default", hosts: list[str] | None = None,
                   tls_cert: Path | None = None, tls_key: Path | None = None) -> Access:
        """The password from ``password_file`` (with ``generate``: a token created there when missing),
        TLS from a PEM certificate chain and key. ValueError: one sentence naming the file."""
        try:
            password = load_or_create_token(password_file) if generate else read_password(password_file)
        except OSError as exc:
            raise ValueError(f"{password_file}: {exc.strerror}") from None
        return cls(password, user, frozenset(hosts or ()), _tls_context(tls_cert, tls_key), password_file.resolve())


def _tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None:
        if key is not None:
            raise ValueError("--tls-key needs --tls-cert")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"--tls-cert {cert} / --tls-key {key}: {exc}") from None
    return context


def check_origin(headers: Any, hosts: frozenset[str]) -> None:
    """Refuse what a web page could send: a Host that is not ours (DNS rebinding) and any request
    a browser makes on a page's behalf (``Origin``, ``Sec-Fetch-Site`` other than typed-in)."""
    host = headers.get("Host")
    if host is None or not (is_loopback(host_of(host)) or host_of(host) in hosts):
        raise EngineError.of(497, "Host not allowed: this server answers only to loopback names and the "
                                  "hosts given with --allow-host")
    if headers.get("Origin") is not None or headers.get("Sec-Fetch-Site", "none") != "none":
        raise EngineError.of(497, "Requests from web pages (Origin) are not allowed")


def authenticate(headers: Any, params: dict[str, str], expected_user: str, expected_password: str) -> None:
    """Basic auth, X-ClickHouse-User/Key headers or user/password parameters, like ClickHouse;
    compared in constant time. Always required: there is no anonymous access."""
    user, password = params.get("user", ""), params.get("password", "")
    auth = headers.get("Authorization", "")
    if auth.startswith("Basic "):
        try:
            user, _, password = base64.b64decode(auth[6:], validate=True).decode(errors="replace").partition(":")
        except (binascii.Error, ValueError):
            user, password = "", ""
    user = headers.get("X-ClickHouse-User", user) or "default"
    password = headers.get("X-ClickHouse-Key", password)
    if not (hmac.compare_digest(user.encode(), expected_user.encode())
            and hmac.compare_digest(password.encode(), expected_password.encode())):
        raise EngineError.of(516, f"{user[:64]}: Authentication failed: password is incorrect, or there is no "
                                  "user with such name")
