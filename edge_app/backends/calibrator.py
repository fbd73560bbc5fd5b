"""INT8 entropy calibrator: the shipped calibration/ images, one cache file.

TensorRT's implicit INT8 quantisation measures each activation's range on
real inputs. As torch2trt's ``DatasetCalibrator`` does, ``get_batch`` copies
the next preprocessed image (the very ``edge_app.imaging.preprocess`` the runtime
uses) to one device buffer and hands TensorRT its address; the first build
writes the resulting scales to a calibration cache, and every later build
(after a JetPack upgrade, say) reads that one file instead of recalibrating.

The base class is ``tensorrt.IInt8EntropyCalibrator2`` when TensorRT imports
(pybind11 wants its ``__init__`` called explicitly); a plain object otherwise,
so this module imports and is tested on any machine. Device memory goes
through the ``cuda`` module handed in (``pycuda.driver`` on a Jetson).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator

import numpy as np

from edge_app import fsutil
from edge_app.backends.base import BackendError
from edge_app.imaging import preprocess

logger = logging.getLogger(__name__)

try:
    import tensorrt as _trt
except Exception:  # ImportError, or OSError when libnvinfer is missing: CPU machine
    _trt = None

CALIBRATION_MANIFEST = "manifest.json"
# Which list of calibration/manifest.json feeds which network.
NET_LISTS = {"detector": "frames", "classifier": "crops"}
# Below this many readable images the activation ranges are guesswork.
MIN_IMAGES = 8


def find_calibration_dir(model_dir: str | Path) -> Path:
    """calibration/ inside a (versioned) model folder, else beside it (the repository layout)."""
    d = Path(model_dir)
    for candidate in (d / "calibration", d.parent / "calibration"):
        if (candidate / CALIBRATION_MANIFEST).is_file():
            return candidate
    raise BackendError(f"no calibration set found in {d / 'calibration'} or {d.parent / 'calibration'} "
                       "(restore calibration/ from the model release; INT8 engines are built from it)")


def calibration_files(calib_dir: str | Path, net: str) -> list[Path]:
    """Files listed for ``net`` in calibration/manifest.json, as paths.

    The release lists ``{"frames": [{"file": ...}], "crops": [...]}`` (frames
    calibrate the detector, crops the classifier); ``{"detector": [...]}`` and
    ``{"detector": {"files": [...]}}`` are read too.
    """
    d = Path(calib_dir)
    path = d / CALIBRATION_MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackendError(f"calibration manifest missing: {path} (restore calibration/ from the release)") from None
    except (OSError, ValueError) as exc:
        raise BackendError(f"calibration manifest {path} is unreadable: {exc}") from None
    entry = None
    if isinstance(data, dict):
        entry = data.get(NET_LISTS.get(net, net)) or data.get("networks", data).get(net)
    if isinstance(entry, dict):
        entry = entry.get("files")
    if not isinstance(entry, list) or not entry:
        raise BackendError(f"calibration manifest {path} lists no files for the {net}")
    names = [item.get("file") if isinstance(item, dict) else item for item in entry]
    if not all(isinstance(n, str) and n for n in names):
        raise BackendError(f"calibration manifest {path} has an entry without a file name for the {net}")
    return [d / n for n in names]


class CalibrationBatches:
    """Preprocessed float32 inputs (batch 1) for one network, read lazily from disk."""

    def __init__(self, files: list[Path], net: str, input_shape: tuple[int, ...], stain_norm: bool = False):
        self.files = list(files)
        self.net = net
        self.stain_norm = stain_norm  # the classifier's own preprocessing (manifest), as at run time
        self.input_shape = tuple(int(v) for v in input_shape)
        self.skipped: list[Path] = []

    def __len__(self) -> int:
        return len(self.files)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.input_shape)) * 4

    def __iter__(self) -> Iterator[np.ndarray]:
        used = 0
        for path in self.files:
            try:
                x = preprocess.model_input(self.net, preprocess.read_rgb(str(path)), self.stain_norm)
            except (OSError, ValueError) as exc:
                # One bad file must not stop a kiosk's first boot; too many must.
                logger.warning("calibration image %s skipped: %s", path.name, exc)
                self.skipped.append(path)
                continue
            if tuple(x.shape) != self.input_shape:
                raise BackendError(f"calibration input from {path.name} has shape {tuple(x.shape)}, the {self.net} "
                                   f"expects {self.input_shape}: calibration/ and models/ are from different releases")
            used += 1
            yield np.ascontiguousarray(x, dtype=np.float32)
        if used < MIN_IMAGES:
            raise BackendError(f"only {used} readable calibration images for the {self.net} (need {MIN_IMAGES}); "
                               "restore calibration/ from the model release")


class _CalibratorLogic:
    """Batches to device memory, cache through one file. Mixed into the TensorRT base class."""

    def _setup(self, batches: CalibrationBatches, cache_path: str | Path, cuda) -> None:
        self.batches = batches
        self.cache_path = Path(cache_path)
        self._cuda = cuda
        self._iter: Iterator[np.ndarray] | None = None
        self._device = None  # one buffer, reused for every batch
        self.batches_served = 0
        self.cache_read = False
        self.cache_written = False

    # -- the IInt8Calibrator interface (names and signatures as TensorRT calls them)
    def get_batch_size(self) -> int:
        return int(self.batches.input_shape[0])

    def get_batch(self, names, *rest):
        """Device pointers of the next batch (one input), or None when the set is exhausted."""
        if self._iter is None:
            self._iter = iter(self.batches)
        try:
            batch = next(self._iter)
        except StopIteration:
            return None
        if self._device is None:
            self._device = self._cuda.mem_alloc(batch.nbytes)
        self._cuda.memcpy_htod(self._device, batch)
        self.batches_served += 1
        return [int(self._device)]

    def read_calibration_cache(self, *rest):
        """The cache bytes if the file exists: TensorRT then skips calibration."""
        try:
            data = self.cache_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("calibration cache %s unreadable (%s); recalibrating", self.cache_path, exc)
            return None
        if not data:
            return None
        self.cache_read = True
        logger.info("using calibration cache %s", self.cache_path.name)
        return data

    def write_calibration_cache(self, cache, *rest) -> None:
        data = bytes(cache)
        fsutil.make_dirs(self.cache_path.parent)
        fsutil.atomic_write(self.cache_path, data, what="calibration cache")  # temp file + rename, no link followed
        self.cache_written = True
        logger.info("calibration cache written: %s (%d bytes, %d images)", self.cache_path.name, len(data),
                    self.batches_served)

    def free(self) -> None:
        if self._device is not None:
            free = getattr(self._device, "free", None)
            if free is not None:
                free()
            self._device = None


def _make_class(base: type) -> type:
    class EntropyCalibrator(_CalibratorLogic, base):
        """IInt8EntropyCalibrator2 over the shipped calibration set."""

        def __init__(self, batches: CalibrationBatches, cache_path: str | Path, cuda):
            if base is not object:
                base.__init__(self)  # pybind11 base classes need this explicit call
            self._setup(batches, cache_path, cuda)

    return EntropyCalibrator


EntropyCalibrator = _make_class(_trt.IInt8EntropyCalibrator2 if _trt is not None else object)
_classes: dict = {}


def calibrator_for(trt_module) -> type:
    """The calibrator class deriving from ``trt_module.IInt8EntropyCalibrator2``."""
    base = getattr(trt_module, "IInt8EntropyCalibrator2", None)
    if base is None:
        raise BackendError(f"TensorRT {getattr(trt_module, '__version__', '?')} has no implicit INT8 calibration; "
                           "use the Q/DQ model")
    if _trt is not None and base is _trt.IInt8EntropyCalibrator2:
        return EntropyCalibrator
    if base not in _classes:
        _classes[base] = _make_class(base)
    return _classes[base]
