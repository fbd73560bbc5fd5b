"""``wbc-counter`` console script: one sub-command per verb.

Each verb lives in ``edge_app/commands/<verb>.py`` with ``add_parser(sub)``
and ``main(args) -> int``; this module only wires them up, adds the options
every verb shares (``--data-dir``, ``--config``, ``-v``) and turns the
product's own errors (config, model, store, camera/source) into one clear line on stderr instead of a traceback.
Whatever a verb did not handle (a damaged database, a full disk, a refused path, a bug) is mapped here, in
``explain``, to a line that says what to do; ``-v`` logs the traceback for service. The process umask is
set first, so every file the product creates is 0640 and every folder 0750.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from edge_app import __version__, fsutil, paths
from edge_app.textsafe import for_terminal, one_line

logger = logging.getLogger(__name__)

VERBS = ("classify", "detect", "run", "bench", "report", "sync", "lis", "selftest", "status", "serve", "review", "sign",
         "adapt")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where the database and crops live (default: $WBC_DATA_DIR or ~/.local/share/wbc-counter)")
    parser.add_argument("--config", type=Path, default=None, help="TOML/YAML config file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wbc-counter", description="Live five-part leukocyte differential.")
    parser.add_argument("--version", action="version", version=f"wbc-counter {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for verb in VERBS:
        module = importlib.import_module(f"edge_app.commands.{verb}")
        p = module.add_parser(sub)
        _common(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    from edge_app.backends import BackendError
    from edge_app.capture import CaptureError
    from edge_app.config import ConfigError
    from edge_app.logsetup import setup_logging
    from edge_app.store import StoreError

    # Files and folders made from here on are 0640 / 0750 (systemd units set the same UMask=).
    os.umask(fsutil.UMASK)
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    args.data_dir = paths.data_dir(args.data_dir)
    try:
        return int(args._main(args) or 0)
    except (ConfigError, BackendError, StoreError, CaptureError) as exc:
        print(for_terminal(f"wbc-counter {args.verb}: error: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wbc-counter {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place every verb's unexpected failure becomes a message
        print(for_terminal(f"wbc-counter {args.verb}: error: {explain(exc, args.data_dir)}"), file=sys.stderr)
        logger.debug("%s failed", args.verb, exc_info=True)
        return 2


def explain(exc: BaseException, data_dir: Path) -> str:
    """One line for a failure no verb handled itself: what happened and what to do."""
    import sqlite3

    from edge_app.store import db

    if db.is_disk_full(exc, data_dir):
        return fsutil.disk_full_message(data_dir)
    if fsutil.is_disk_full(exc):
        where = Path(exc.filename).parent if getattr(exc, "filename", None) else data_dir
        return fsutil.disk_full_message(where)
    if db.is_damaged(exc):
        return db.damaged_message(paths.db_path(data_dir), exc)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return (f"the database in {data_dir} stayed locked by another wbc-counter process: try again in a "
                "minute")
    if isinstance(exc, fsutil.UnsafePathError):
        return str(exc)
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or exc} (run as the kiosk user, or check the folder's owner)"
    if isinstance(exc, OSError):
        what = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        return f"{what} (check the path and free space in {data_dir})"
    return (f"internal error {type(exc).__name__}: {one_line(exc)} (please report it to service; "
            "-v shows the details)")


if __name__ == "__main__":
    sys.exit(main())
