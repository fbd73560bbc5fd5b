"""Model updates: versioned model folders, an ``active`` pointer, rollback.

Layout (``/var/lib/wbc-counter/models`` on a kiosk)::

    models/
      2024.06.1/   manifest.json, *.onnx, *.tflite, calibration/, reference/
      2024.09.0/
      active   -> 2024.09.0      (what the counter loads: [model] dir = .../models/active)
      previous -> 2024.06.1      (where a failed update goes back to)

A new model drops in as a folder; ``update_model`` copies it in under its
manifest version, points ``active`` at it, and runs the self-test, which
builds its TensorRT engine once. Only the model's own checks (files, engine,
reference answers) decide: a camera that is busy during the update does not
throw a good model away. When they pass, the old model's engines are
deleted; otherwise ``active`` goes back to the previous version, whose
engine was never touched, and the self-test is re-run on it so the
recorded result describes the model the counter will actually use.
Pointers are swapped with an atomic rename, so a power cut mid-update leaves
either the old or the new pointer, never none.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge_app.backends import BackendError, engine_cache
from edge_app.fsutil import DIR_MODE, UnsafePathError, refuse_symlink, safe_name
from edge_app.model.bundle import Manifest

logger = logging.getLogger(__name__)

ACTIVE = "active"
PREVIOUS = "previous"
# Checks that judge the model itself. A camera in use or a full disk during an
# update is reported, but is no reason to throw a good model away.
MODEL_CHECKS = ("model", "engine", "reference")
# Folders copied with a model when present beside or inside it.
COMPANIONS = ("calibration", "reference")


class UpdateError(BackendError):
    """A model folder that cannot be installed; the message says why."""


@dataclass
class UpdateOutcome:
    kept: bool  # the new version is active
    version: str
    previous: str | None
    result: object  # the SelftestResult recorded last (of the model now active)
    message: str


def _pointer(root: Path, name: str) -> str | None:
    link = root / name
    if not link.is_symlink():
        return None
    target = os.readlink(link)
    return Path(target).name if (root / Path(target).name).is_dir() else None


def active_version(root: str | Path) -> str | None:
    return _pointer(Path(root), ACTIVE)


def previous_version(root: str | Path) -> str | None:
    return _pointer(Path(root), PREVIOUS)


def versions(root: str | Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and not p.is_symlink() and not p.name.startswith(".") and
                  (p / "manifest.json").is_file())


def _set_pointer(root: Path, name: str, version: str) -> None:
    tmp = root / f".{name}.tmp{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(version, tmp)  # relative: the folder can be moved or mounted elsewhere
    os.replace(tmp, root / name)


def _companion(src: Path, name: str) -> Path | None:
    for candidate in (src / name, src.parent / name):
        if candidate.is_dir():
            return candidate
    return None


def _refuse_links(folder: str, names: list[str]) -> list[str]:
    """``copytree`` ignore hook: a link in a release would copy (or point at) a file from outside it."""
    links = [n for n in names if os.path.islink(os.path.join(folder, n))]
    if links:
        raise UpdateError(f"the release holds symbolic links ({', '.join(sorted(links)[:3])} in {folder}): "
                          "a release is plain files only; copy it again without links")
    return []


def install_version(src: str | Path, root: str | Path) -> str:
    """Copy a verified model folder to ``root/<version>``; returns the version. Idempotent."""
    src, root = Path(src), Path(root)
    manifest = Manifest.load(src)  # raises BackendError with the reason
    for net in ("detector", "classifier"):
        for kind in manifest.entry(net)["files"]:
            manifest.file(net, kind, verify=True)  # never install a damaged release
    version = manifest.version
    try:
        safe_name(version, "model version")
        plain = version not in (ACTIVE, PREVIOUS)
    except UnsafePathError:
        plain = False
    if not plain:
        raise UpdateError(f"model version '{version}' cannot be used as a folder name (use a plain name such "
                          "as 2024.09.0)")
    dest = root / version
    refuse_symlink(dest, "model folder")  # a planted link would send the copy outside the models folder
    if dest.is_dir():
        if (dest / "manifest.json").read_bytes() != (src / "manifest.json").read_bytes():
            raise UpdateError(f"model version {version} is already installed with different files; "
                              "a new release needs a new version number")
        logger.info("model %s already installed", version)
        return version
    root.mkdir(parents=True, exist_ok=True)
    partial = root / f".{version}.partial"
    if partial.is_symlink():  # left by someone else: drop the link itself, never what it points at
        partial.unlink()
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=DIR_MODE)
    files = {"manifest.json"} | {n for net in ("detector", "classifier") for n in manifest.entry(net)["files"].values()}
    try:
        for name in sorted(files):
            shutil.copy2(src / name, partial / name)
        for name in COMPANIONS:
            comp = _companion(src, name)
            if comp is not None:
                _refuse_links(str(comp.parent), [comp.name])  # the folder itself, then all inside it
                shutil.copytree(comp, partial / name, ignore=_refuse_links)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # a refused or failed copy leaves nothing behind
        raise
    os.replace(partial, dest)  # appears whole or not at all
    logger.info("model %s installed in %s", version, dest)
    return version


def activate(root: str | Path, version: str) -> None:
    root = Path(root)
    if not (root / version / "manifest.json").is_file():
        raise UpdateError(f"model version {version} is not installed in {root}")
    current = active_version(root)
    if current and current != version:
        _set_pointer(root, PREVIOUS, current)
    _set_pointer(root, ACTIVE, version)
    logger.info("model %s active (previous %s)", version, current)


def rollback(root: str | Path) -> str:
    root = Path(root)
    prev = previous_version(root)
    if prev is None:
        raise UpdateError(f"no previous model version to roll back to in {root}")
    _set_pointer(root, ACTIVE, prev)
    (root / PREVIOUS).unlink()
    logger.warning("rolled back to model %s", prev)
    return prev


def model_hashes(model_dir: str | Path) -> set[str]:
    manifest = Manifest.load(model_dir)
    return {h for net in ("detector", "classifier") for h in manifest.entry(net)["sha256"].values()}


def _retire_old(root: Path, engine_dir: Path | None) -> None:
    # Only active and previous stay on disk: older folders are deleted after an update passed.
    keep = [v for v in (active_version(root), previous_version(root)) if v]
    for version in versions(root):
        if version not in keep:
            shutil.rmtree(root / version)
            logger.info("removed old model folder %s", version)
    if engine_dir is not None:
        # The previous model stays on disk for a manual rollback; its engines are
        # rebuilt if it is ever activated again.
        engine_cache.prune(engine_dir, model_hashes(root / ACTIVE))


def model_passed(result) -> bool:
    """The model checks ran and passed (whatever the camera or disk said)."""
    checks = {c.name: c.ok for c in result.checks}
    return all(checks.get(name) is True for name in MODEL_CHECKS)


def update_model(src: str | Path, root: str | Path, selftest: Callable[..., object],
                 engine_dir: str | Path | None = None) -> UpdateOutcome:
    """Install ``src``, activate it, self-test it; keep it or roll back."""
    root = Path(root)
    old = active_version(root)
    version = install_version(src, root)
    if version == old:
        result = selftest(model_dir=root / ACTIVE)
        return UpdateOutcome(result.ok, version, previous_version(root), result,
                             f"model {version} is already the active version; self-test "
                             f"{'passed' if result.ok else 'FAILED'}")
    activate(root, version)
    result = selftest(model_dir=root / ACTIVE)
    if model_passed(result):
        _retire_old(root, Path(engine_dir) if engine_dir else None)
        others = "" if result.ok else f"; other checks failed: {result.summary()}"
        return UpdateOutcome(True, version, old, result,
                             f"model {version} passed its self-test and is now active"
                             + (f" (previous {old} kept for rollback)" if old else "") + others)
    failed = result.summary()
    if old is None:
        return UpdateOutcome(False, version, None, result,
                             f"model {version} FAILED its self-test and there is no previous version: {failed}")
    rollback(root)
    again = selftest(model_dir=root / ACTIVE)
    return UpdateOutcome(False, version, old, again,
                         f"model {version} FAILED its self-test ({failed}); rolled back to {old}, whose "
                         f"self-test {'passed' if again.ok else 'also FAILED'}")
