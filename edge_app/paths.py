"""The one resolver for the product's folders: data, engines, models, reports, crops.

Every verb and the TensorRT backend ask this module, so ``selftest
--build-engine --data-dir X`` and ``run --data-dir X`` agree on the engine
file whatever mix of ``--data-dir``, ``$WBC_DATA_DIR`` and
``[inference] engine_dir`` is given. Precedence for the data dir:
``--data-dir`` > ``$WBC_DATA_DIR`` > ``$XDG_DATA_HOME/wbc-counter`` >
``~/.local/share/wbc-counter``. The engine dir is ``[inference] engine_dir``
when set, else ``<data dir>/engines``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# models/ beside the package in a checkout; <prefix>/share/wbc-counter/models when installed as data files.
_CHECKOUT_MODELS = Path(__file__).resolve().parent.parent / "models"

DB_NAME = "wbc.sqlite3"


def data_dir(explicit: str | Path | None = None) -> Path:
    """Where the database, crops, engines and reports of this kiosk live."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("WBC_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "wbc-counter"


def engine_dir(cfg_engine_dir: str | Path | None, data: str | Path) -> Path:
    """TensorRT engines and calibration caches: the config's folder, else ``<data>/engines``."""
    return Path(cfg_engine_dir) if cfg_engine_dir else Path(data) / "engines"


def shipped_models_dir() -> Path:
    """The shipped models/ folder (repo checkout or installed data files)."""
    if (_CHECKOUT_MODELS / "manifest.json").is_file():
        return _CHECKOUT_MODELS
    alt = Path(sys.prefix) / "share" / "wbc-counter" / "models"
    return alt if (alt / "manifest.json").is_file() else _CHECKOUT_MODELS


def installed_models_dir(data: str | Path) -> Path:
    """Versioned model folders installed by ``selftest --update-from`` (``active`` points at one)."""
    return Path(data) / "models"


def db_path(data: str | Path) -> Path:
    return Path(data) / DB_NAME


def reports_dir(data: str | Path) -> Path:
    return Path(data) / "reports"


def bench_dir(data: str | Path) -> Path:
    return Path(data) / "bench"


def run_lock_path(data: str | Path) -> Path:
    """The lock file one counter (``run``, ``bench``) holds for the whole of its session."""
    return Path(data) / "run.lock"


def review_users_path(data: str | Path) -> Path:
    """Per-user review tokens (``wbc-counter serve --add-user``), mode 0600: the LAN login."""
    return Path(data) / "review_users"


def precision_cache(data: str | Path) -> Path:
    """The measured ``precision = "auto"`` choice per CPU and model (edge_app.model.precision)."""
    return Path(data) / "precision.json"
