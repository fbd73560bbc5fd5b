"""Who may use the review page: per-user tokens, login sessions and CSRF tokens.

Tokens live in ``<data-dir>/review_users`` (``edge_app.paths.review_users_path``),
one ``name:sha256(token)`` line per user, written 0600 by ``wbc-counter serve
--add-user NAME``, which prints the token once; the file holds only hashes. A
file readable by others is refused, like the FHIR token file.

Served on loopback only, the page asks for a name (the kiosk's own screen is
the access control); served on any other address, it asks for name and token.
A login makes a server-side session: a random id in an HttpOnly, SameSite=Strict
cookie, and a random CSRF token that every change must send back (hidden form
field or ``X-CSRF-Token`` header). Sessions are in memory: restarting the server
logs everyone out.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)

COOKIE = "wbc_review"
SESSION_TTL_S = 12 * 3600
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}$")


class AuthError(RuntimeError):
    """The login setup cannot be used; the message says what to do."""


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name or ""))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Users:
    """The per-user token file."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> dict[str, str]:
        """name -> token digest; {} when the file does not exist."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        if not stat.S_ISREG(st.st_mode):
            raise AuthError(f"{self.path} is not a regular file")
        if st.st_mode & 0o077:
            raise AuthError(f"{self.path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
                            f"run 'chmod 600 {self.path}'")
        users = {}
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, digest = line.rpartition(":")
            if not sep or not valid_name(name) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise AuthError(f"{self.path} line {n} is not 'name:sha256hex': recreate the user with "
                                "'wbc-counter serve --add-user NAME'")
            users[name] = digest
        return users

    def add(self, name: str) -> str:
        """Create or replace a user's token; returns the new token (shown once)."""
        if not valid_name(name):
            raise AuthError(f"user name {name!r} must be 1-64 letters, digits, spaces or ._@- "
                            "and start with a letter or digit")
        users = self.load()
        token = secrets.token_urlsafe(24)
        users[name] = _digest(token)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("# wbc-counter review users: name:sha256(token); edit with 'wbc-counter serve --add-user'\n")
            for n, d in sorted(users.items()):
                f.write(f"{n}:{d}\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        return token

    def check(self, name: str, token: str) -> bool:
        digest = self.load().get(name)
        # Compare even for an unknown name, so timing does not tell which names exist.
        return hmac.compare_digest(digest or "0" * 64, _digest(token or "")) and digest is not None


@dataclass
class Session:
    id: str
    csrf: str
    user: Optional[str] = None
    created: float = field(default_factory=time.monotonic)


class Sessions:
    """Server-side login sessions, by the random id in the cookie."""

    def __init__(self):
        self._by_id: dict[str, Session] = {}

    def new(self) -> Session:
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32))
        self._by_id[s.id] = s
        return s

    def get(self, sid: Optional[str]) -> Optional[Session]:
        s = self._by_id.get(sid or "")
        if s is not None and time.monotonic() - s.created > SESSION_TTL_S:
            self._by_id.pop(s.id, None)
            return None
        return s

    def drop(self, sid: Optional[str]) -> None:
        self._by_id.pop(sid or "", None)


def csrf_ok(session: Optional[Session], sent: Optional[str]) -> bool:
    return session is not None and bool(sent) and hmac.compare_digest(session.csrf, sent)
