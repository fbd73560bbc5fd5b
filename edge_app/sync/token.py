"""Bearer token from a file the kiosk user alone can read.

A token in a config file or on a command line ends up in backups and ``ps``
output; a 0600 file does not. The token itself is never logged.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from edge_app.config import ConfigError

logger = logging.getLogger(__name__)


def read_token_file(path: str | os.PathLike) -> str:
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(f"token file {p} does not exist (create it with the bearer token on one line, "
                          f"then 'chmod 600 {p}')") from None
    except OSError as exc:
        raise ConfigError(f"cannot read token file {p}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"token file {p} is not a regular file")
    if st.st_mode & 0o077:
        raise ConfigError(f"token file {p} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                          f"run 'chmod 600 {p}'")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {p}: {exc.strerror}") from None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"token file {p} is malformed: not plain ASCII (put only the token in it)") from None
    token = text.strip()
    if not token:
        raise ConfigError(f"token file {p} is empty (put the bearer token on its first line)")
    # An HTTP header value must be one printable line; anything else is a
    # pasted JSON blob, a "Bearer " prefix or two tokens.
    if any(ch.isspace() or not ch.isprintable() for ch in token):
        raise ConfigError(f"token file {p} is malformed: the token must be one line without spaces "
                          "(no 'Bearer ' prefix)")
    return token
