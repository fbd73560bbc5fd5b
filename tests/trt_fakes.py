"""Stand-ins for ``tensorrt`` and ``pycuda.driver`` (the real ones need a Jetson GPU).

They expose the real API names and call signatures (Builder, create_network
with NetworkDefinitionCreationFlag.EXPLICIT_BATCH, OnnxParser.parse,
BuilderConfig.set_flag/set_memory_pool_limit/int8_calibrator,
build_serialized_network, Runtime.deserialize_cuda_engine, the 8.x bindings
API vs the 10.x named-tensor API, IInt8EntropyCalibrator2), record what was
called, and behave like TensorRT where the app depends on it:

- ``build_serialized_network`` drives an INT8 calibrator the way TensorRT
  does (read the cache; if none, get_batch_size + get_batch until None, then
  write_calibration_cache) and checks every batch pointer names a device
  buffer of the input's size;
- ``deserialize_cuda_engine`` returns None for a plan from another version;
- the "engine" executes the parsed ONNX with onnxruntime on the bytes found
  in fake device memory, so buffer plumbing, output order and stream
  synchronisation are checked end to end;
- device memory access without a pushed CUDA context fails, as pycuda does.

Also builds tiny ONNX models + a manifest for tests (``write_tiny_bundle``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import types
from pathlib import Path

import numpy as np

from edge_app.imaging.preprocess import CLASSIFIER_SIZE

CROP = CLASSIFIER_SIZE[0]  # the tiny classifier takes what the app sends
ATT = CROP // 8

PLAN_MAGIC = b"FAKEPLAN"

# -- pycuda.driver -------------------------------------------------------------


class LogicError(RuntimeError):
    pass


def make_cuda(gpu: str = "Orin", cc: tuple[int, int] = (8, 7), devices: int = 1):
    """A ``pycuda.driver`` stand-in with device memory held in bytearrays."""
    mod = types.ModuleType("pycuda.driver")
    state = {"memory": {}, "next_ptr": 0x1000, "ctx_depth": 0, "calls": []}
    mod.state = state
    mod.LogicError = LogicError

    def need_context(what):
        if state["ctx_depth"] <= 0:
            raise LogicError(f"cuMem{what} failed: invalid device context")

    class Context:
        def push(self):
            state["ctx_depth"] += 1

        def pop(self):
            state["ctx_depth"] -= 1

    class Device:
        @staticmethod
        def count():
            return devices

        def __init__(self, ordinal):
            if ordinal >= devices:
                raise LogicError("invalid device ordinal")

        def name(self):
            return gpu

        def compute_capability(self):
            return cc

        def retain_primary_context(self):
            state["calls"].append("retain_primary_context")
            return Context()

    class DeviceAllocation:
        def __init__(self, nbytes):
            self.ptr = state["next_ptr"]
            state["next_ptr"] += nbytes + 256
            state["memory"][self.ptr] = bytearray(nbytes)
            self.freed = False

        def __int__(self):
            return self.ptr

        def free(self):
            state["memory"].pop(self.ptr, None)
            self.freed = True

    class Stream:
        _handles = [0x50]

        def __init__(self):
            self.handle = Stream._handles[0]
            Stream._handles[0] += 1
            self.pending = []
            state.setdefault("streams", []).append(self)

        def synchronize(self):
            for op in self.pending:
                op()
            self.pending.clear()

    def init():
        state["calls"].append("init")

    def mem_alloc(nbytes):
        need_context("Alloc")
        return DeviceAllocation(int(nbytes))

    def _htod(dev, host):
        buf = state["memory"][int(dev)]
        data = np.ascontiguousarray(host).tobytes()
        assert len(data) <= len(buf), "host array larger than the device buffer"
        buf[:len(data)] = data

    def _dtoh(host, dev):
        buf = state["memory"][int(dev)]
        flat = np.frombuffer(bytes(buf[:host.nbytes]), dtype=host.dtype)
        host.reshape(-1)[:] = flat

    def memcpy_htod(dev, host):
        need_context("cpyHtoD")
        _htod(dev, host)

    def memcpy_htod_async(dev, host, stream=None):
        need_context("cpyHtoDAsync")
        snapshot = np.array(host, copy=True)  # page-locked buffer may be reused before the copy runs
        stream.pending.append(lambda: _htod(dev, snapshot))

    def memcpy_dtoh_async(host, dev, stream=None):
        need_context("cpyDtoHAsync")
        stream.pending.append(lambda: _dtoh(host, dev))

    def pagelocked_empty(shape, dtype):
        return np.empty(shape, dtype=dtype)

    mod.Context, mod.Device, mod.DeviceAllocation, mod.Stream = Context, Device, DeviceAllocation, Stream
    mod.init, mod.mem_alloc, mod.memcpy_htod = init, mem_alloc, memcpy_htod
    mod.memcpy_htod_async, mod.memcpy_dtoh_async, mod.pagelocked_empty = (memcpy_htod_async, memcpy_dtoh_async,
                                                                          pagelocked_empty)
    return mod


# -- tensorrt -----------------------------------------------------------------


class _Enum:
    def __init__(self, name, value):
        self.name, self.value = name, value

    def __int__(self):
        return self.value

    def __repr__(self):
        return self.name


def _read_plan(blob: bytes) -> tuple[dict, bytes]:
    if not blob.startswith(PLAN_MAGIC):
        raise ValueError("not a plan")
    (n,) = struct.unpack("<I", blob[8:12])
    header = json.loads(blob[12:12 + n])
    return header, blob[12 + n:]


def make_trt(version: str = "8.6.1", cuda=None, implicit_int8: bool = True, fail_build: bool = False):
    """A ``tensorrt`` stand-in. ``implicit_int8=False`` mimics a release without calibrators."""
    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    major = int(version.split(".")[0])
    calls: list = []
    mod.calls = calls

    class Logger:
        VERBOSE, INFO, WARNING, ERROR = "VERBOSE", "INFO", "WARNING", "ERROR"

        def __init__(self, severity="WARNING"):
            self.severity = severity

    class NetworkDefinitionCreationFlag:
        EXPLICIT_BATCH = _Enum("EXPLICIT_BATCH", 0)

    class BuilderFlag:
        FP16 = _Enum("FP16", 0)
        INT8 = _Enum("INT8", 1)

    class MemoryPoolType:
        WORKSPACE = _Enum("WORKSPACE", 0)

    class TensorIOMode:
        NONE, INPUT, OUTPUT = _Enum("NONE", 0), _Enum("INPUT", 1), _Enum("OUTPUT", 2)

    class DataType:
        FLOAT = _Enum("FLOAT", 0)
        HALF = _Enum("HALF", 1)
        INT8 = _Enum("INT8", 2)

    def nptype(dt):
        return {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8}[dt.name]

    def volume(shape):
        return int(np.prod(shape))

    class INetworkDefinition:
        def __init__(self, flags):
            self.flags = flags
            self.inputs: list[tuple[str, tuple]] = []
            self.outputs: list[tuple[str, tuple]] = []
            self.onnx: bytes | None = None

    class OnnxParser:
        def __init__(self, network, logger):
            assert isinstance(network, INetworkDefinition) and isinstance(logger, Logger)
            self.network = network
            self.errors: list[str] = []

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

        def parse(self, model: bytes, path: str | None = None) -> bool:
            import onnx

            calls.append(("OnnxParser.parse", len(model)))
            try:
                proto = onnx.load_from_string(bytes(model))
                onnx.checker.check_model(proto)
            except Exception as exc:
                self.errors.append(f"In node -1 (parseGraph): INVALID_GRAPH: {type(exc).__name__}")
                return False

            def dims(vi):
                return tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)

            inits = {i.name for i in proto.graph.initializer}
            self.network.inputs = [(vi.name, dims(vi)) for vi in proto.graph.input if vi.name not in inits]
            self.network.outputs = [(vi.name, dims(vi)) for vi in proto.graph.output]
            self.network.onnx = bytes(model)
            return True

    class IBuilderConfig:
        def __init__(self):
            self.flags: set[str] = set()
            self.pool_limits: dict = {}
            self.int8_calibrator = None

        def set_flag(self, flag):
            calls.append(("BuilderConfig.set_flag", flag.name))
            self.flags.add(flag.name)

        def get_flag(self, flag):
            return flag.name in self.flags

        def set_memory_pool_limit(self, pool, size):
            calls.append(("BuilderConfig.set_memory_pool_limit", pool.name, int(size)))
            self.pool_limits[pool.name] = int(size)

    class IHostMemory:
        def __init__(self, data):
            self._data = data
            self.nbytes = len(data)

        def __bytes__(self):
            return self._data

        def __buffer__(self, flags):  # Python 3.12+ buffer protocol; bytes() also uses __bytes__
            return memoryview(self._data)

    class Builder:
        def __init__(self, logger):
            assert isinstance(logger, Logger)
            calls.append(("Builder", logger.severity))

        def create_network(self, flags=0):
            calls.append(("Builder.create_network", int(flags)))
            return INetworkDefinition(int(flags))

        def create_builder_config(self):
            return IBuilderConfig()

        def build_serialized_network(self, network, config):
            calls.append(("Builder.build_serialized_network", sorted(config.flags)))
            if major < 10 and not network.flags & (1 << int(NetworkDefinitionCreationFlag.EXPLICIT_BATCH)):
                raise TypeError("ONNX parser requires an explicit-batch network on TensorRT 8.x")
            if network.onnx is None or fail_build:
                return None
            calibrated = False
            cal = config.int8_calibrator
            if "INT8" in config.flags and cal is not None:
                if not getattr(cal, "_trt_base_initialised", False):
                    raise TypeError("__init__ of IInt8EntropyCalibrator2 was not called (pybind11)")
                calibrated = self._calibrate(cal, network)
            header = {"trt_version": version, "flags": sorted(config.flags), "calibrated": calibrated,
                      "inputs": network.inputs, "outputs": network.outputs}
            raw = json.dumps(header).encode()
            return IHostMemory(PLAN_MAGIC + struct.pack("<I", len(raw)) + raw + network.onnx)

        @staticmethod
        def _calibrate(cal, network) -> bool:
            cache = cal.read_calibration_cache()
            calls.append(("calibrator.read_calibration_cache", cache is not None))
            if cache:
                return True
            assert cal.get_batch_size() == 1
            (name, shape), = network.inputs
            nbytes = volume(shape) * 4
            n = 0
            while True:
                ptrs = cal.get_batch([name])
                if not ptrs:
                    break
                assert len(ptrs) == 1 and isinstance(ptrs[0], int)
                buf = cuda.state["memory"].get(ptrs[0])
                assert buf is not None, "get_batch returned a pointer that is not device memory"
                assert len(buf) == nbytes, f"batch buffer {len(buf)} bytes, input needs {nbytes}"
                x = np.frombuffer(bytes(buf), dtype=np.float32)
                assert np.isfinite(x).all() and 0 <= x.min() and x.max() <= 255
                n += 1
            calls.append(("calibrator.batches", n))
            cal.write_calibration_cache(memoryview(f"TRT-{version}-EntropyCalibration2 {n}\n".encode()))
            return True

    class IExecutionContext:
        def __init__(self, engine):
            self.engine = engine
            self.addresses: dict[str, int] = {}
            import onnxruntime as ort

            self.session = ort.InferenceSession(engine.onnx, providers=["CPUExecutionProvider"])

        def _run(self, ptr_of):
            mem = cuda.state["memory"]
            feeds = {}
            for name, shape in self.engine.inputs:
                buf = mem[ptr_of(name)]
                feeds[name] = np.frombuffer(bytes(buf), dtype=np.float32).reshape(shape)
            outs = self.session.run([n for n, _ in self.engine.outputs], feeds)
            for (name, _), y in zip(self.engine.outputs, outs):
                data = np.ascontiguousarray(y, dtype=np.float32).tobytes()
                mem[ptr_of(name)][:len(data)] = data

        def _enqueue(self, stream_handle, ptr_of):
            if cuda.state["ctx_depth"] <= 0:
                raise LogicError("enqueue without a current CUDA context")
            stream = next(s for s in cuda.state["streams"] if s.handle == stream_handle)
            stream.pending.append(lambda: self._run(ptr_of))
            return True

    class ICudaEngine:
        def __init__(self, header, onnx_bytes):
            self.header = header
            self.onnx = onnx_bytes
            self.inputs = [(n, tuple(s)) for n, s in header["inputs"]]
            self.outputs = [(n, tuple(s)) for n, s in header["outputs"]]
            self.names = [n for n, _ in self.inputs + self.outputs]
            self.shapes = dict(self.inputs + self.outputs)

    class ICudaEngine8(ICudaEngine):
        """8.x: the bindings API (execute_async_v2)."""

        @property
        def num_bindings(self):
            return len(self.names)

        def get_binding_name(self, i):
            return self.names[i]

        def binding_is_input(self, i):
            return i < len(self.inputs)

        def get_binding_shape(self, i):
            return self.shapes[self.names[i]]

        def get_binding_dtype(self, i):
            return DataType.FLOAT

        def create_execution_context(self):
            engine = self

            class Ctx8(IExecutionContext):
                def execute_async_v2(self, bindings, stream_handle):
                    calls.append(("execute_async_v2", len(bindings)))
                    assert len(bindings) == len(engine.names)
                    return self._enqueue(stream_handle, lambda name: bindings[engine.names.index(name)])

            return Ctx8(self)

    class ICudaEngine10(ICudaEngine):
        """10.x: named I/O tensors (set_tensor_address + execute_async_v3)."""

        @property
        def num_io_tensors(self):
            return len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name in dict(self.inputs) else TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return self.shapes[name]

        def get_tensor_dtype(self, name):
            return DataType.FLOAT

        def create_execution_context(self):
            class Ctx10(IExecutionContext):
                def set_tensor_address(self, name, ptr):
                    calls.append(("set_tensor_address", name))
                    self.addresses[name] = int(ptr)
                    return True

                def execute_async_v3(self, stream_handle):
                    calls.append(("execute_async_v3",))
                    missing = [n for n in self.engine.names if n not in self.addresses]
                    assert not missing, f"tensor addresses not set: {missing}"
                    return self._enqueue(stream_handle, lambda name: self.addresses[name])

            return Ctx10(self)

    class Runtime:
        def __init__(self, logger):
            assert isinstance(logger, Logger)

        def deserialize_cuda_engine(self, blob):
            calls.append(("Runtime.deserialize_cuda_engine", len(blob)))
            try:
                header, onnx_bytes = _read_plan(bytes(blob))
            except ValueError:
                return None  # TensorRT logs "magic tag does not match" and returns None
            if header["trt_version"] != version:
                return None  # "The engine plan file is not compatible with this version of TensorRT"
            return (ICudaEngine10 if major >= 10 else ICudaEngine8)(header, onnx_bytes)

    for name, obj in dict(Logger=Logger, NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag,
                          BuilderFlag=BuilderFlag, MemoryPoolType=MemoryPoolType, TensorIOMode=TensorIOMode,
                          DataType=DataType, nptype=nptype, volume=volume, OnnxParser=OnnxParser,
                          Builder=Builder, Runtime=Runtime).items():
        setattr(mod, name, obj)
    if implicit_int8:
        class IInt8EntropyCalibrator2:
            def __init__(self):
                self._trt_base_initialised = True

            def get_algorithm(self):
                return "ENTROPY_CALIBRATION_2"

        mod.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    return mod


def install(monkeypatch, version="8.6.1", gpu="Orin", cc=(8, 7), **kw):
    """Inject the fakes into the app's TensorRT backend and calibrator modules."""
    from edge_app.backends import calibrator as calib_mod
    from edge_app.backends import tensorrt as trt_backend

    fake_cuda = make_cuda(gpu, cc)
    fake_trt = make_trt(version, fake_cuda, **kw)
    monkeypatch.setattr(trt_backend, "trt", fake_trt)
    monkeypatch.setattr(trt_backend, "cuda", fake_cuda)
    monkeypatch.setattr(trt_backend, "_context", None)
    monkeypatch.setattr(trt_backend, "_trt_logger", None)
    monkeypatch.setattr(calib_mod, "_trt", None)
    return fake_trt, fake_cuda


# -- tiny models ----------------------------------------------------------------

CLASSES = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "other"]


def _classifier_onnx(seed: int = 0) -> bytes:
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    w = helper.make_tensor("w", TensorProto.FLOAT, (3, 6), (rng.normal(size=(3, 6)) / 50).astype(np.float32).ravel())
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2], keepdims=0),  # (1,3)
        helper.make_node("MatMul", ["m", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["nchw"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("ReduceMean", ["pooled"], ["grey"], axes=[1], keepdims=1),  # (1,1,ATT,ATT)
        helper.make_node("Transpose", ["grey"], ["grey_nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Div", ["grey_nhwc", "scale"], ["attention"]),
    ]
    scale = helper.make_tensor("scale", TensorProto.FLOAT, (), [255.0])
    graph = helper.make_graph(
        nodes, "tiny_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, (1, CROP, CROP, 3))],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, (1, 6)),
         helper.make_tensor_value_info("attention", TensorProto.FLOAT, (1, ATT, ATT, 1))],
        [w, scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _detector_onnx() -> bytes:
    import onnx
    from onnx import TensorProto, helper

    k = helper.make_tensor("k", TensorProto.FLOAT, (4, 3, 1, 1), np.full(12, 0.01, np.float32))
    scale = helper.make_tensor("scale", TensorProto.FLOAT, (), [255.0])
    nodes = [
        helper.make_node("Transpose", ["frame"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["nchw"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),  # (1,3,60,80)
        helper.make_node("ReduceMean", ["pooled"], ["grey"], axes=[1], keepdims=1),
        helper.make_node("Div", ["grey", "scale"], ["g01"]),
        helper.make_node("Transpose", ["g01"], ["heatmap"], perm=[0, 2, 3, 1]),  # (1,60,80,1)
        helper.make_node("Conv", ["pooled", "k"], ["d"]),
        helper.make_node("Transpose", ["d"], ["ltrb"], perm=[0, 2, 3, 1]),  # (1,60,80,4)
    ]
    graph = helper.make_graph(
        nodes, "tiny_detector",
        [helper.make_tensor_value_info("frame", TensorProto.FLOAT, (1, 240, 320, 3))],
        [helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, (1, 60, 80, 1)),
         helper.make_tensor_value_info("ltrb", TensorProto.FLOAT, (1, 60, 80, 4))],
        [k, scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_tiny_bundle(root: Path, calib_crops: list[Path] = (), calib_frames: list[Path] = (),
                      version: str = "test-1", qdq: bool = True, seed: int = 0) -> Path:
    """models/ with tiny ONNX models + manifest.json, and calibration/ beside it. Returns the model dir.

    ``seed`` changes the classifier's weights: another model release with other hashes.
    """
    model_dir = root / "models"
    model_dir.mkdir(parents=True, exist_ok=True)
    entries = {}
    specs = {
        "classifier": (_classifier_onnx(seed), "image", [1, CROP, CROP, 3],
                       [("probs", [1, 6]), ("attention", [1, ATT, ATT, 1])]),
        "detector": (_detector_onnx(), "frame", [1, 240, 320, 3],
                     [("heatmap", [1, 60, 80, 1]), ("ltrb", [1, 60, 80, 4])]),
    }
    for net, (blob, in_name, in_shape, outs) in specs.items():
        files = {"onnx": f"{net}.onnx"}
        (model_dir / files["onnx"]).write_bytes(blob)
        if qdq:
            files["onnx_qdq"] = f"{net}_qdq.onnx"
            (model_dir / files["onnx_qdq"]).write_bytes(blob)  # same graph: the fake has no Q/DQ semantics
        entries[net] = {"input": {"name": in_name, "shape": in_shape},
                        "outputs": [{"name": n, "shape": s} for n, s in outs],
                        "stride": 4, "files": files,
                        "sha256": {f: _sha(model_dir / f) for f in files.values()}}
    manifest = {"version": version, "classes": CLASSES, "models": entries}
    (model_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    calib = root / "calibration"
    listing = {}
    # The release's layout: frames calibrate the detector, crops the classifier.
    for kind, sources in (("crops", calib_crops), ("frames", calib_frames)):
        (calib / kind).mkdir(parents=True, exist_ok=True)
        listing[kind] = []
        for src in sources:
            shutil.copy(src, calib / kind / src.name)
            listing[kind].append({"file": f"{kind}/{src.name}", "source": "test"})
    (calib / "manifest.json").write_text(json.dumps(listing))
    return model_dir


def write_reference(model_dir: Path, crops, frames) -> None:
    """reference/ as scripts.training.make_reference writes it, from the FP32 ONNX via onnxruntime."""
    from edge_app.imaging import preprocess
    from edge_app.model.bundle import Classifier, Detector, Manifest, sha256_file
    from edge_app.selftest import REFERENCE_DIR, REFERENCE_FILE
    from scripts.training.make_reference import DETECT_THRESHOLD, OnnxFP32Backend

    manifest = Manifest.load(model_dir)
    classifier = Classifier(OnnxFP32Backend(manifest, "classifier"))
    detector = Detector.for_manifest(OnnxFP32Backend(manifest, "detector"), manifest, DETECT_THRESHOLD)
    out = model_dir / REFERENCE_DIR
    out.mkdir()
    ref = {"model_version": manifest.version, "detect_threshold": DETECT_THRESHOLD, "classifier": [], "detector": []}
    for p in crops:
        shutil.copy(p, out / p.name)
        probs = classifier(preprocess.read_rgb(str(p))).probs
        ref["classifier"].append({"file": p.name, "sha256": sha256_file(p), "probs": [float(v) for v in probs]})
    for p in frames:
        shutil.copy(p, out / p.name)
        found = detector(preprocess.read_rgb(str(p)))
        ref["detector"].append({"file": p.name, "sha256": sha256_file(p),
                                "boxes": [[float(v) for v in d.box] for d in found]})
    (out / REFERENCE_FILE).write_text(json.dumps(ref))
