"""TensorRT engine cache: where an engine lives, and whether it is still valid.

A serialized TensorRT engine only runs on the TensorRT version and GPU that
built it, and only means something for the model file it was built from. As
jetson-inference does, the file name carries all of that
(``classifier.<model sha256[:16]>.trt8.6.2.orin.sm87.int8.engine``), and a
JSON sidecar beside it repeats the full key plus the engine's own sha256, so a
changed model, a JetPack upgrade, a different GPU or a truncated file is seen
as *stale* and rebuilt instead of loaded.

This module knows nothing about TensorRT itself: keys are plain strings, so
it is unit-tested on any machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_app import fsutil
from edge_app.model.bundle import sha256_file

logger = logging.getLogger(__name__)

ENGINE_SUFFIX = ".engine"
SIDECAR_SUFFIX = ".json"
CALIB_SUFFIX = ".calib"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; two engines with equal keys are interchangeable."""

    net: str  # 'detector' or 'classifier'
    model_sha256: str  # of the ONNX file the engine was built from
    trt_version: str  # tensorrt.__version__, e.g. '8.6.2'
    gpu_name: str  # e.g. 'Orin'
    compute_capability: str  # e.g. '8.7'
    precision: str  # 'int8', 'fp16' or 'fp32'

    def file_name(self) -> str:
        return (f"{self.net}.{self.model_sha256[:16]}.trt{self.trt_version}.{_slug(self.gpu_name)}"
                f".sm{self.compute_capability.replace('.', '')}.{self.precision}{ENGINE_SUFFIX}")

    def describe(self) -> str:
        """Human words for a technician: what the engine was built for."""
        return (f"TensorRT {self.trt_version} on '{self.gpu_name}' (sm {self.compute_capability}), "
                f"{self.precision}, model {self.model_sha256[:12]}")


@dataclass
class CacheState:
    """Result of looking for the engine of a key."""

    status: str  # 'ok', 'missing' or 'stale'
    path: Path
    reason: str = ""
    engine_sha256: str | None = None
    found: list[EngineKey] = field(default_factory=list)  # engines of this net built for other keys

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _slug(text: str) -> str:
    """GPU names contain spaces and slashes ('NVIDIA Jetson AGX Orin'); file names must not."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def engine_path(engine_dir: str | Path, key: EngineKey) -> Path:
    return Path(engine_dir) / key.file_name()


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + SIDECAR_SUFFIX)


def calibration_cache_path(engine_dir: str | Path, net: str, model_sha256: str, trt_version: str) -> Path:
    """One calibration cache per model and TensorRT version (its format is version-specific, not GPU-specific)."""
    return Path(engine_dir) / f"{net}.{model_sha256[:16]}.trt{trt_version}{CALIB_SUFFIX}"


def read_sidecar(engine: Path) -> dict | None:
    try:
        return json.loads(sidecar_path(engine).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _key_from(data: dict) -> EngineKey | None:
    try:
        return EngineKey(**data["key"])
    except (KeyError, TypeError):
        return None


def engines_for(engine_dir: str | Path, net: str) -> list[tuple[Path, EngineKey | None]]:
    """Every cached engine of one network, with the key its sidecar records (None if unreadable)."""
    d = Path(engine_dir)
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.glob(f"{net}.*{ENGINE_SUFFIX}")):
        meta = read_sidecar(p)
        out.append((p, _key_from(meta) if meta else None))
    return out


def check(engine_dir: str | Path, key: EngineKey, verify_hash: bool = True) -> CacheState:
    """Is there a valid engine for ``key``? Never raises for a bad cache: it reports it."""
    path = engine_path(engine_dir, key)
    others = [k for p, k in engines_for(engine_dir, key.net) if p != path and k is not None and k != key]
    if not path.is_file():
        reason = "no engine built yet"
        if others:
            reason = f"only an engine built for {others[-1].describe()} exists; this system needs {key.describe()}"
        return CacheState("missing", path, reason, found=others)
    meta = read_sidecar(path)
    if meta is None:
        return CacheState("stale", path, f"engine {path.name} has no readable {SIDECAR_SUFFIX} record "
                          "(interrupted build?)", found=others)
    recorded = _key_from(meta)
    if recorded != key:
        what = recorded.describe() if recorded else "an unknown configuration"
        return CacheState("stale", path, f"engine {path.name} was built for {what}; this system needs "
                          f"{key.describe()}", found=others)
    expected = meta.get("engine_sha256")
    if verify_hash:
        actual = sha256_file(path)
        if actual != expected:
            return CacheState("stale", path, f"engine {path.name} is damaged (sha256 {actual[:12]} != recorded "
                              f"{str(expected)[:12]})", found=others)
    return CacheState("ok", path, engine_sha256=expected, found=others)


def _atomic_write(path: Path, data: bytes) -> None:
    # Write-then-rename (fsutil: O_EXCL temp file in the folder, no planted link followed): a power cut
    # mid-build leaves the old file or none, never half an engine.
    fsutil.atomic_write(path, data, what="engine cache file")


def save(engine_dir: str | Path, key: EngineKey, blob: bytes, extra: dict | None = None) -> CacheState:
    """Store a freshly built engine and its sidecar; returns its (ok) state."""
    d = Path(engine_dir)
    fsutil.make_dirs(d)
    path = engine_path(d, key)
    # The sidecar goes first and names the engine's hash, so a crash between
    # the two writes leaves a mismatch that ``check`` reports as stale.
    digest = hashlib.sha256(blob).hexdigest()
    meta = {"key": asdict(key), "engine_sha256": digest, **(extra or {})}
    _atomic_write(sidecar_path(path), json.dumps(meta, indent=1, sort_keys=True).encode())
    _atomic_write(path, bytes(blob))
    logger.info("engine cached: %s (sha256 %s)", path.name, digest[:12])
    return CacheState("ok", path, engine_sha256=digest)


def load(engine_dir: str | Path, key: EngineKey) -> bytes:
    """The engine bytes of a valid cache entry; raises ``LookupError`` with the reason otherwise."""
    state = check(engine_dir, key)
    if not state.ok:
        raise LookupError(state.reason)
    return state.path.read_bytes()


def remove(engine: Path) -> None:
    for p in (engine, sidecar_path(engine)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def prune(engine_dir: str | Path, keep_model_sha256: set[str]) -> list[Path]:
    """Delete engines and calibration caches of models no longer kept (after an update passed)."""
    d = Path(engine_dir)
    removed: list[Path] = []
    if not d.is_dir():
        return removed
    prefixes = {s[:16] for s in keep_model_sha256}
    for p in sorted(d.iterdir()):
        if not (p.name.endswith(ENGINE_SUFFIX) or p.name.endswith(CALIB_SUFFIX)):
            continue
        parts = p.name.split(".")
        if len(parts) > 2 and parts[1] not in prefixes:
            remove(p)
            removed.append(p)
            logger.info("removed cached %s of a retired model", p.name)
    return removed
