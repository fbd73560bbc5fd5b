"""TFLite backend: the CPU fallback (laptops, CI), INT8 or FP32 models.

Prefers ``ai_edge_litert`` (the maintained successor of TFLite) and falls back
to ``tflite_runtime`` on older images. XNNPACK is the default CPU delegate of
both; the thread count comes from the config.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge_app.backends.base import Backend, BackendError, TensorSpec

logger = logging.getLogger(__name__)

try:  # maintained package
    from ai_edge_litert.interpreter import Interpreter as _Interpreter
    RUNTIME = "ai_edge_litert"
except ImportError:  # pragma: no cover - depends on the image
    try:
        from tflite_runtime.interpreter import Interpreter as _Interpreter
        RUNTIME = "tflite_runtime"
    except ImportError:
        _Interpreter = None
        RUNTIME = None


def available() -> bool:
    return _Interpreter is not None


class TFLiteBackend(Backend):
    name = "tflite"

    def __init__(self, model_path: str | Path, output_shapes: list[tuple[int, ...]] | None = None,
                 threads: int = 2, output_names: list[str] | None = None):
        if _Interpreter is None:
            raise BackendError("no TFLite runtime installed: pip install ai-edge-litert "
                               "(or tflite-runtime on older images)")
        path = Path(model_path)
        if not path.is_file():
            raise BackendError(f"model file missing: {path} (reinstall the package or restore models/)")
        try:
            self._interp = _Interpreter(model_path=str(path), num_threads=threads)
            self._interp.allocate_tensors()
        except Exception as exc:  # the runtime raises plain ValueError/RuntimeError
            raise BackendError(f"cannot load TFLite model {path}: {exc} (file corrupt? reinstall models/)") from exc
        self.path = path
        inp = self._interp.get_input_details()[0]
        self._in_index = inp["index"]
        self._in_dtype = inp["dtype"]
        self._in_q = inp["quantization"]
        self._spec = TensorSpec(inp["name"], tuple(int(v) for v in inp["shape"]))
        outs = self._interp.get_output_details()
        # Converters rename outputs; match the manifest order by name where the file keeps it, else by shape.
        self._outs = _order_outputs(outs, output_shapes, output_names)
        self.int8 = self._in_dtype == np.int8
        logger.debug("loaded %s via %s (%s input, %d threads)", path.name, RUNTIME,
                     np.dtype(self._in_dtype).name, threads)

    @property
    def input_spec(self) -> TensorSpec:
        return self._spec

    def prepare_input(self, x: np.ndarray) -> np.ndarray:
        if x.dtype == self._in_dtype:
            return x
        if self._in_dtype in (np.int8, np.uint8):
            # round(x / scale + zero), clipped, in x's own float type: the same operations, in place
            scale, zero = self._in_q
            info = np.iinfo(self._in_dtype)
            q = x / scale if scale != 1.0 else x.copy()  # dividing by 1.0 is exact: skip it
            np.add(q, zero, out=q)
            np.rint(q, out=q)
            np.clip(q, info.min, info.max, out=q)
            return q.astype(self._in_dtype)
        return x.astype(self._in_dtype, copy=False)

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        if tuple(x.shape) != self._spec.shape:
            raise BackendError(f"input shape {tuple(x.shape)} != model input {self._spec.shape}")
        x = self.prepare_input(x)
        self._interp.set_tensor(self._in_index, x)
        self._interp.invoke()
        results = []
        for det in self._outs:
            y = self._interp.get_tensor(det["index"])
            if det["dtype"] in (np.int8, np.uint8):
                scale, zero = det["quantization"]
                y = (y.astype(np.float32) - zero) * scale
            results.append(y.astype(np.float32, copy=False))
        return results

    def close(self) -> None:
        self._interp = None


def _order_outputs(outs: list[dict], shapes: list[tuple[int, ...]] | None,
                   names: list[str] | None = None) -> list[dict]:
    """The file's outputs in manifest order. A name the file carries is matched by name (the embedding
    outputs are several tensors of one shape); the others by shape, first come first served."""
    if not shapes:
        return list(outs)
    names = list(names or [None] * len(shapes))
    by_name = {d["name"]: d for d in outs}
    remaining = [d for d in outs if d["name"] not in set(names)]
    ordered = []
    for shape, name in zip(shapes, names):
        if name in by_name:
            ordered.append(by_name[name])
            continue
        match = next((d for d in remaining if tuple(int(v) for v in d["shape"]) == tuple(shape)), None)
        if match is None:
            raise BackendError(f"model has no output of shape {tuple(shape)} "
                               f"(has {[tuple(d['shape']) for d in outs]}); manifest and model disagree")
        remaining.remove(match)
        ordered.append(match)
    return ordered
