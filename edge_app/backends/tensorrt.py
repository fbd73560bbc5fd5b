"""TensorRT backend (Jetson): build the INT8 engine once, cache it, run it with pycuda.

First start: the shipped ONNX is parsed (``OnnxParser``), built with the INT8
and FP16 flags (FP16 for layers without an INT8 kernel) and calibrated with
the shipped calibration/ set through ``IInt8EntropyCalibrator2`` and a
calibration cache. A TensorRT without implicit calibration gets the Q/DQ ONNX
instead. The serialized engine is cached by ``edge_app.backends.engine_cache`` under a
key of model sha256 + TensorRT version + GPU + precision, and rebuilt when any
of them changes.

Inference: page-locked host buffers, one device buffer per I/O tensor, one
CUDA stream; ``execute_async_v2`` with a bindings list on TensorRT 8.x,
``set_tensor_address`` + ``execute_async_v3`` on 10.x (which dropped the
bindings API).

``tensorrt`` and ``pycuda`` are imported under guards: on a laptop or in CI
this module imports, ``available()`` is False and ``auto`` picks TFLite.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_app.backends import calibrator as calib
from edge_app.backends import engine_cache
from edge_app.backends.base import Backend, BackendError, TensorSpec
from edge_app.backends.engine_cache import EngineKey

logger = logging.getLogger(__name__)

try:
    import tensorrt as trt
except Exception as _exc:  # ImportError, or OSError when libnvinfer is absent
    trt = None
    logger.debug("tensorrt not importable: %s", _exc)
try:
    import pycuda.driver as cuda
except Exception as _exc:  # pycuda builds against a local CUDA; absent on CPU machines
    cuda = None
    logger.debug("pycuda not importable: %s", _exc)

# Scratch memory TensorRT may use while choosing kernels (Jetsons share it with the CPU).
WORKSPACE_MB = 1024
# INT8 kernels need compute capability 6.1+ (JetPack 5/6 boards are 7.2 and 8.7);
# below that the engine is built in FP16 instead.
MIN_INT8_CC = (6, 1)
REBUILD_HINT = "rebuild it with 'sudo systemctl restart wbc-engine' (or 'wbc-counter selftest --build-engine')"

_context = None  # the CUDA primary context, retained once per process


def available() -> bool:
    """True when TensorRT and pycuda import and a CUDA device answers."""
    if trt is None or cuda is None:
        return False
    try:
        cuda.init()
        return cuda.Device.count() > 0
    except Exception as exc:  # pycuda raises its own LogicError/RuntimeError family
        logger.debug("no CUDA device: %s", exc)
        return False


def trt_major() -> int:
    return int(str(trt.__version__).split(".")[0])


def implicit_int8_supported() -> bool:
    """Implicit (calibrated) INT8: TensorRT 8.x/10.x; later versions take Q/DQ models only."""
    return hasattr(trt, "IInt8EntropyCalibrator2")


def _cuda_context():
    """Retain and push the device's primary context once: TensorRT's runtime uses the same one."""
    global _context
    if _context is None:
        if not available():
            raise BackendError("TensorRT backend asked for, but no CUDA GPU answers "
                               "(use --backend tflite or auto)")
        _context = cuda.Device(0).retain_primary_context()
    return _context


def device_info() -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of device 0."""
    dev = cuda.Device(0)
    major, minor = dev.compute_capability()
    return str(dev.name()), f"{major}.{minor}"


_trt_logger = None


def trt_logger():
    global _trt_logger
    if _trt_logger is None:
        _trt_logger = trt.Logger(trt.Logger.WARNING)
    return _trt_logger


@dataclass
class EnginePlan:
    """What to build for one network on this machine, and where it is cached."""

    key: EngineKey
    onnx_kind: str  # manifest file kind: 'onnx' or 'onnx_qdq'
    calibrate: bool  # implicit INT8 with the entropy calibrator
    calibration_cache: Path | None
    engine_dir: Path

    @property
    def engine_path(self) -> Path:
        return engine_cache.engine_path(self.engine_dir, self.key)


def plan_engine(manifest, net: str, precision: str, engine_dir: str | Path) -> EnginePlan:
    """Key, model file and calibration choice for ``net``; needs TensorRT + a GPU, touches no file."""
    engine_dir = Path(engine_dir)  # from edge_app.paths.engine_dir: the caller owns the choice
    gpu, cc = device_info()
    version = str(trt.__version__)
    if precision == "int8" and tuple(int(v) for v in cc.split(".")) < MIN_INT8_CC:
        logger.warning("GPU %s (sm %s) has no INT8 kernels: building the %s in FP16", gpu, cc, net)
        precision = "fp16"
    kind, calibrate = "onnx", False
    if precision == "int8":
        if implicit_int8_supported():
            calibrate = True
        elif manifest.entry(net)["files"].get("onnx_qdq"):
            kind = "onnx_qdq"
        else:
            raise BackendError(f"TensorRT {version} needs a Q/DQ model for INT8, and the manifest lists no "
                               f"'onnx_qdq' file for the {net} (install a newer model release)")
    entry = manifest.entry(net)
    name = entry["files"][kind]
    sha = entry["sha256"][name]
    key = EngineKey(net, sha, version, gpu, cc, precision)
    cache = engine_cache.calibration_cache_path(engine_dir, net, sha, version) if calibrate else None
    return EnginePlan(key, kind, calibrate, cache, engine_dir)


def build_serialized(onnx_path: str | Path, precision: str, int8_calibrator=None,
                     workspace_mb: int = WORKSPACE_MB) -> bytes:
    """ONNX file -> serialized engine (IHostMemory bytes). Raises BackendError with the parser's words."""
    tlog = trt_logger()
    builder = trt.Builder(tlog)
    # 8.x needs explicit batch asked for; 10.x has only explicit batch and deprecates the flag.
    flags = 0 if trt_major() >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, tlog)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse {Path(onnx_path).name}: {errors or 'unknown error'} "
                           "(model file from an incompatible release?)")
    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):  # 8.4+
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    else:  # 8.0-8.3
        config.max_workspace_size = workspace_mb << 20
    if precision in ("int8", "fp16"):
        # With INT8 too, FP16 lets layers without an INT8 kernel fall back to half precision, not FP32.
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        if int8_calibrator is not None:
            config.int8_calibrator = int8_calibrator
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT could not build an engine from {Path(onnx_path).name} "
                           "(out of memory, or see the TensorRT messages in the journal)")
    return bytes(serialized)


def build_engine(manifest, plan: EnginePlan) -> engine_cache.CacheState:
    """Build, calibrate and cache the engine of ``plan`` (minutes on a Jetson)."""
    net = plan.key.net
    onnx_path = manifest.file(net, plan.onnx_kind)  # sha256-checked: never build from a damaged model
    calibrator = None
    extra: dict = {"onnx": onnx_path.name, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if plan.calibrate:
        calib_dir = calib.find_calibration_dir(manifest.dir)
        shape = tuple(manifest.entry(net)["input"]["shape"])
        batches = calib.CalibrationBatches(calib.calibration_files(calib_dir, net), net, shape, manifest.stain_norm)
        calibrator = calib.calibrator_for(trt)(batches, plan.calibration_cache, cuda)
    logger.info("building TensorRT engine for the %s: %s", net, plan.key.describe())
    t0 = time.monotonic()
    ctx = _cuda_context()
    ctx.push()
    try:
        blob = build_serialized(onnx_path, plan.key.precision, calibrator)
    finally:
        if calibrator is not None:
            calibrator.free()
        ctx.pop()
    if plan.calibrate:
        if not plan.calibration_cache.is_file():
            raise BackendError(f"TensorRT built the {net} without writing its calibration cache "
                               f"{plan.calibration_cache}: check free disk space and permissions")
        extra["calibration_cache"] = plan.calibration_cache.name
        extra["calibration_cache_sha256"] = engine_cache.sha256_file(plan.calibration_cache)
    extra["build_seconds"] = round(time.monotonic() - t0, 1)
    return engine_cache.save(plan.engine_dir, plan.key, blob, extra)


def ensure_engine(manifest, net: str, precision: str, engine_dir: str | Path,
                  build: bool = True) -> tuple[EnginePlan, engine_cache.CacheState]:
    """The valid cached engine of ``net``, built first when missing or stale and ``build`` is set."""
    plan = plan_engine(manifest, net, precision, engine_dir)
    state = engine_cache.check(plan.engine_dir, plan.key)
    if state.ok:
        return plan, state
    if not build:
        raise BackendError(f"the TensorRT engine for the {net} is {state.status}: {state.reason}; {REBUILD_HINT}")
    logger.info("TensorRT engine for the %s is %s (%s): building", net, state.status, state.reason)
    built = build_engine(manifest, plan)
    # Engines of this same model for another TensorRT/GPU can never load here again.
    for path, key in engine_cache.engines_for(plan.engine_dir, net):
        if (key is not None and key.model_sha256 == plan.key.model_sha256
                and (key.trt_version, key.gpu_name, key.compute_capability)
                != (plan.key.trt_version, plan.key.gpu_name, plan.key.compute_capability)):
            engine_cache.remove(path)
            logger.info("removed engine %s (built for %s)", path.name, key.describe())
    return plan, built


@dataclass
class _Binding:
    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: np.dtype
    host: np.ndarray = None
    device: object = None


class TensorRTBackend(Backend):
    """One deserialized engine, its execution context, buffers and stream."""

    name = "tensorrt"

    def __init__(self, engine_bytes: bytes, output_names: list[str] | None = None,
                 output_shapes: list[tuple[int, ...]] | None = None, engine_path: Path | None = None,
                 engine_sha256: str | None = None):
        if trt is None or cuda is None:
            raise BackendError("TensorRT or pycuda is not installed here (use --backend tflite or auto)")
        self.engine_path = engine_path
        self.engine_sha256 = engine_sha256
        self._ctx = _cuda_context()
        self._ctx.push()
        try:
            runtime = trt.Runtime(trt_logger())
            engine = runtime.deserialize_cuda_engine(engine_bytes)
            if engine is None:
                where = engine_path.name if engine_path else "engine"
                raise BackendError(f"TensorRT {trt.__version__} cannot load {where} (built by another TensorRT "
                                   f"version or damaged); {REBUILD_HINT}")
            self._runtime, self._engine = runtime, engine
            self._context = engine.create_execution_context()
            self._v3 = trt_major() >= 10
            self._stream = cuda.Stream()
            self._bindings = self._allocate()
        finally:
            self._ctx.pop()
        inputs = [b for b in self._bindings if b.is_input]
        if len(inputs) != 1:
            raise BackendError(f"engine has {len(inputs)} inputs; the app feeds exactly one")
        self._input = inputs[0]
        self._outputs = _order_outputs([b for b in self._bindings if not b.is_input], output_names, output_shapes)
        self._spec = TensorSpec(self._input.name, self._input.shape)

    @classmethod
    def from_manifest(cls, manifest, net: str, precision: str, engine_dir: str | Path,
                      build: bool = True) -> "TensorRTBackend":
        """Load the cached engine of ``net`` (building it first if missing or stale, when ``build``)."""
        plan, state = ensure_engine(manifest, net, precision, engine_dir, build)
        outputs = manifest.entry(net)["outputs"]
        backend = cls(state.path.read_bytes(), [o["name"] for o in outputs], [tuple(o["shape"]) for o in outputs],
                      engine_path=state.path, engine_sha256=state.engine_sha256)
        expected = tuple(manifest.entry(net)["input"]["shape"])
        if backend.input_spec.shape != expected:
            backend.close()
            raise BackendError(f"engine input {backend.input_spec.shape} != manifest {expected}; {REBUILD_HINT}")
        logger.info("%s: TensorRT engine %s", net, state.path.name)
        return backend

    def _io(self) -> list[tuple[str, bool, tuple[int, ...], object]]:
        e = self._engine
        if self._v3:
            return [(name, e.get_tensor_mode(name) == trt.TensorIOMode.INPUT, tuple(e.get_tensor_shape(name)),
                     e.get_tensor_dtype(name)) for name in (e.get_tensor_name(i) for i in range(e.num_io_tensors))]
        return [(e.get_binding_name(i), e.binding_is_input(i), tuple(e.get_binding_shape(i)), e.get_binding_dtype(i))
                for i in range(e.num_bindings)]

    def _allocate(self) -> list[_Binding]:
        out = []
        for name, is_input, shape, trt_dtype in self._io():
            if any(int(v) < 0 for v in shape):
                raise BackendError(f"engine tensor {name} has a dynamic shape {shape}; the shipped models are static")
            b = _Binding(name, is_input, tuple(int(v) for v in shape), np.dtype(trt.nptype(trt_dtype)))
            b.host = cuda.pagelocked_empty(int(trt.volume(b.shape)), b.dtype)
            b.device = cuda.mem_alloc(b.host.nbytes)
            if self._v3:
                self._context.set_tensor_address(name, int(b.device))
            out.append(b)
        return out

    @property
    def input_spec(self) -> TensorSpec:
        return self._spec

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        if tuple(x.shape) != self._spec.shape:
            raise BackendError(f"input shape {tuple(x.shape)} != engine input {self._spec.shape}")
        inp = self._input
        # The capture and pipeline threads may differ from the loading one: make the context current here.
        self._ctx.push()
        try:
            np.copyto(inp.host, np.asarray(x, dtype=inp.dtype).ravel())
            cuda.memcpy_htod_async(inp.device, inp.host, self._stream)
            if self._v3:
                ok = self._context.execute_async_v3(stream_handle=self._stream.handle)
            else:
                ok = self._context.execute_async_v2(bindings=[int(b.device) for b in self._bindings],
                                                    stream_handle=self._stream.handle)
            if not ok:
                raise BackendError("TensorRT execution failed (see the journal); restart the counter")
            for b in self._outputs:
                cuda.memcpy_dtoh_async(b.host, b.device, self._stream)
            self._stream.synchronize()
        finally:
            self._ctx.pop()
        # Copies: the page-locked buffers are overwritten by the next call.
        return [b.host.reshape(b.shape).astype(np.float32, copy=True) for b in self._outputs]

    def close(self) -> None:
        bindings = getattr(self, "_bindings", None) or []
        if bindings:
            self._ctx.push()  # device memory belongs to the context: free it while current
            try:
                for b in bindings:
                    if b.device is not None:
                        b.device.free()
                        b.device = None
            finally:
                self._ctx.pop()
        self._bindings = []
        self._context = self._engine = self._runtime = None


def _order_outputs(outs: list[_Binding], names: list[str] | None, shapes: list[tuple[int, ...]] | None) -> list:
    """Manifest order: by tensor name (ONNX names survive the build), else by shape."""
    if not names and not shapes:
        return outs
    by_name = {b.name: b for b in outs}
    if names and all(n in by_name for n in names):
        return [by_name[n] for n in names]
    remaining = list(outs)
    ordered = []
    for shape in shapes or []:
        match = next((b for b in remaining if b.shape == tuple(shape)), None)
        if match is None:
            raise BackendError(f"engine has no output of shape {tuple(shape)} (has {[b.shape for b in outs]}); "
                               f"manifest and engine disagree; {REBUILD_HINT}")
        remaining.remove(match)
        ordered.append(match)
    return ordered
