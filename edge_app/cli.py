"""``wbc-counter`` console script: one sub-command per verb.

Each verb lives in ``edge_app/commands/<verb>.py`` with ``add_parser(sub)``
and ``main(args) -> int``; this module only wires them up, adds the options
every verb shares (``--data-dir``, ``--config``, ``-v``) and turns the
product's own errors (config, model, store, camera/source) into one clear line on stderr instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from edge_app import __version__, paths

logger = logging.getLogger(__name__)

VERBS = ("classify", "detect", "run", "bench", "report", "sync", "lis", "selftest", "status")


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

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    args.data_dir = paths.data_dir(args.data_dir)
    try:
        return int(args._main(args) or 0)
    except (ConfigError, BackendError, StoreError, CaptureError) as exc:
        print(f"wbc-counter {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wbc-counter {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
