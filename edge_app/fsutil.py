"""Safe file writes: atomic, inside the folder they belong to, never through a symlink.

Every file the product writes (reports, ``--summary-json``, blanks, engines,
calibration caches) goes through ``atomic_write``: a temporary file made by
``tempfile.mkstemp`` (``O_CREAT | O_EXCL``, a fresh random name, mode 0600) in
the target's own folder, fsynced, given its final mode, then renamed over the
target with ``os.replace``. A planted symlink at the target or at a guessable
``.tmp`` name can therefore never redirect the write; a symlink at the target
itself is refused with a message rather than silently replaced, since
something put it there.

``safe_name`` checks a file name read from a manifest (a plain name in the
folder, never a path), and ``ensure_inside`` that a path stays inside the
data dir.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

# Process umask set by the CLI at start: files 0640, folders 0750 (group may read, others nothing).
UMASK = 0o027
FILE_MODE = 0o640
DIR_MODE = 0o750


class UnsafePathError(OSError):
    """A path the product refuses to write (a symlink, outside the data dir, a bad name)."""


def refuse_symlink(path: str | Path, what: str = "file") -> None:
    """Raise ``UnsafePathError`` when ``path`` is a symbolic link (dangling or not)."""
    if os.path.islink(path):
        raise UnsafePathError(f"{what} {path} is a symbolic link: refusing to write through it "
                              "(remove the link or choose another path)")


def check_writable_target(path: str | Path, what: str = "file") -> Path:
    """The checks ``atomic_write`` makes, made up front (before a long run): not a link, not a folder,
    and its folder exists. Returns the path."""
    p = Path(path)
    refuse_symlink(p, what)
    if p.is_dir():
        raise UnsafePathError(f"{what} {p} is a folder: give a file name (e.g. {p / 'summary.json'})")
    if not p.parent.is_dir():
        raise UnsafePathError(f"the folder for {what} {p} does not exist: create it first")
    return p


def atomic_write(path: str | Path, data: bytes | str, mode: int = FILE_MODE, what: str = "file",
                 check: Callable[[Path], None] | None = None) -> Path:
    """Write ``data`` to ``path`` whole or not at all, with ``mode``; returns the path.

    Refuses a symlink or a folder at ``path``. ``check(temp_path)``, when given, may read the
    written file back and raise to keep the old one. The temporary file is unlinked on any
    error, so a full disk leaves the old file (or none), never ``path.tmp`` litter.
    """
    p = check_writable_target(path, what)
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, p)  # rename(2) replaces the name itself: nothing is written through a link
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return p


def make_dirs(path: str | Path, mode: int = DIR_MODE) -> Path:
    """``mkdir -p`` with an explicit mode; refuses a symlink in place of the final folder."""
    p = Path(path)
    refuse_symlink(p, "folder")
    p.mkdir(parents=True, exist_ok=True, mode=mode)
    return p


def ensure_inside(base: str | Path, path: str | Path, what: str = "path") -> Path:
    """``path`` resolved (symlinks followed) must lie inside ``base`` resolved; returns it resolved."""
    root = Path(base).resolve()
    real = Path(path).resolve()
    if real != root and root not in real.parents:
        raise UnsafePathError(f"{what} {path} leads outside {base} (to {real}): refusing to write there")
    return real


def safe_name(name: object, what: str = "file name") -> str:
    """A plain file name for a folder: no separators, no '..', no leading dot, no control characters."""
    if not isinstance(name, str) or not name:
        raise UnsafePathError(f"{what} {name!r} is not a file name")
    bad = (name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name
           or any(not ch.isprintable() for ch in name))
    if bad:
        raise UnsafePathError(f"{what} {name!r} is not a plain file name in its folder (no '/', '..', "
                              "leading '.' or control characters)")
    return name


def is_disk_full(exc: BaseException) -> bool:
    """An OSError that means no space (or no quota) is left."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def nearly_full(folder: str | Path, margin: int = 1 << 20) -> bool:
    """Less than ``margin`` bytes left for an unprivileged writer where ``folder`` lives (a missing
    folder is measured at its nearest existing parent)."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < margin


def disk_full_message(folder: str | Path) -> str:
    return (f"the disk holding {folder} is full: free space there (send pending results, delete old exports "
            "and reports), then try again; nothing already committed was lost")
