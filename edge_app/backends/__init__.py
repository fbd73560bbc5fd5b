"""Inference backends behind one interface, chosen by config and logged once.

``create_backend`` maps a backend name (``auto``, ``tensorrt``, ``tflite``)
to an implementation. TensorRT is only importable on a Jetson (system
TensorRT + pycuda); its import failure is logged, not raised, so ``auto``
falls back to TFLite on every other machine.
"""

from __future__ import annotations

import logging

from edge_app.backends.base import Backend, BackendError, TensorSpec

logger = logging.getLogger(__name__)

__all__ = ["Backend", "BackendError", "TensorSpec", "tensorrt_usable", "resolve_backend_name"]


def tensorrt_usable() -> bool:
    """True when TensorRT and pycuda import and a CUDA device answers."""
    try:
        from edge_app.backends import tensorrt as trt_backend
    except ImportError as exc:  # module itself guards its imports; belt and braces
        logger.debug("TensorRT backend unavailable: %s", exc)
        return False
    return trt_backend.available()


def resolve_backend_name(requested: str) -> str:
    """``auto`` -> ``tensorrt`` when usable, else ``tflite``; explicit names are checked."""
    if requested == "auto":
        name = "tensorrt" if tensorrt_usable() else "tflite"
        logger.info("backend auto -> %s", name)
        return name
    if requested == "tensorrt" and not tensorrt_usable():
        raise BackendError("--backend tensorrt asked for, but TensorRT/pycuda or a CUDA GPU is not available "
                           "here (use --backend tflite or auto)")
    if requested not in ("tensorrt", "tflite"):
        raise BackendError(f"unknown backend '{requested}' (choose auto, tensorrt or tflite)")
    return requested
