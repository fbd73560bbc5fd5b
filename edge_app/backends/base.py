"""The one inference-backend interface (TensorRT on a Jetson, TFLite on a CPU).

A backend runs one network: float32 NHWC pixels in, float32 outputs out, in
the order the model manifest lists them. Quantisation (int8 in/out) is the
backend's business, so callers never see it. Small enough to fake in tests.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


class BackendError(RuntimeError):
    """A model cannot be loaded or run; the message says what to do."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]


class Backend(abc.ABC):
    """Runs one network. Use as a context manager to release device memory."""

    name: str = "abstract"

    @property
    @abc.abstractmethod
    def input_spec(self) -> TensorSpec:
        """Shape of the single float32 NHWC input."""

    @abc.abstractmethod
    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        """Run once. ``x`` matches ``input_spec`` (float32, or what ``prepare_input`` made of it); outputs in
        manifest order."""

    def prepare_input(self, x: np.ndarray) -> np.ndarray:
        """``x`` as the network takes it (an INT8 TFLite model: quantised), for ``infer``. The live loop makes
        the detector's input on the capture thread, this step included, so its own thread runs the network."""
        return x

    def close(self) -> None:
        """Free resources (device buffers, interpreter)."""
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
