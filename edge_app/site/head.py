"""A small head on the classifier's embedding, fitted in numpy on verified cells, mixed with the network.

The embedding is the ensemble members' pooled features side by side
(``Classification.embedding``). Three heads, each a linear map on it:

- ``prototype`` (the default): cosine similarity of the unit-length embedding
  to each class's mean unit embedding, times 10, through a softmax. Nothing is
  fitted, so it is as stable with five cells as with fifty.
- ``anchored``: softmax regression that starts at the network's own last layer
  (each member's linear layer, side by side) and is pulled back to it by an L2
  penalty, so a handful of cells moves the decision only as far as they support.
- ``logreg``: the same regression from zero.

The regressions weigh each class by the inverse of its count (five basophils
weigh as much as fifty neutrophils); a prototype is one mean per class, which
is balanced by construction. Which head and how much of it
(``alpha``) was chosen on the val splits (``scripts.training.fewshot --select``).

At run time: ``p = alpha * head + (1 - alpha) * network``. A class with no
verified cell is left to the network: the head only redistributes the
network's probability mass over the classes it was shown. Cost: one (6 x D)
product and a few small array operations per crop (``wbc-counter bench --site``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

# Chosen on the val splits by scripts.training.fewshot --select (never on test): the best mean five-class
# accuracy over k = 5 and 10 cells per class; see models/EVALUATION.md, "Site adaptation". The anchored head
# (lambda 0.1, alpha 0.5) measured within 0.001 of it.
DEFAULT_METHOD = "prototype"
DEFAULT_ALPHA = 0.5
DEFAULT_LAMBDA = 0.1  # for the anchored and logreg heads
METHODS = ("anchored", "logreg", "prototype")


PROTOTYPE_SCALE = 10.0  # cosine x 10 = a softmax temperature of 0.1


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class SiteHead:
    weight: np.ndarray  # (C, D) float32
    bias: np.ndarray  # (C,) float32
    present: np.ndarray  # (C,) bool: classes the head was fitted with
    alpha: float = DEFAULT_ALPHA
    method: str = DEFAULT_METHOD
    name: str = ""  # the profile's name, for the HUD and the session record
    normalise: bool = False  # prototype heads read the unit-length embedding (cosine to class means)

    def __post_init__(self):
        # Masks as floats once: per crop the head is a handful of small array operations (<= 0.2 ms budget).
        self._keep = np.where(self.present, 0.0, -np.inf).astype(np.float32)
        self._on = self.present.astype(np.float32)
        self._off = 1.0 - self._on
        self._bias_keep = (self.bias + self._keep).astype(np.float32)
        self._all = bool(self.present.all())

    def head_probs(self, embedding: np.ndarray, shipped: np.ndarray) -> np.ndarray:
        """(..., C): the head's probabilities on ``embedding`` (..., D); absent classes keep ``shipped``."""
        if self.normalise:
            embedding = embedding / np.maximum(np.linalg.norm(embedding, axis=-1, keepdims=True), 1e-8)
        z = embedding @ self.weight.T + self.bias + self._keep  # -inf: a class the head never saw
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        mass = (shipped * self._on).sum(axis=-1, keepdims=True)
        return e * (mass / e.sum(axis=-1, keepdims=True)) + shipped * self._off

    def mix(self, embedding: np.ndarray, shipped: np.ndarray) -> np.ndarray:
        """The network's probabilities with the head's mixed in by ``alpha`` (sums to 1)."""
        if embedding.ndim == 1 and self._all:  # one crop, every class seen: the fewest array operations
            we = self.weight @ embedding
            if self.normalise:
                we /= max(float(np.sqrt(embedding @ embedding)), 1e-8)
            z = we + self._bias_keep
            e = np.exp(z - z.max())
            e *= self.alpha / e.sum()
            e += (1.0 - self.alpha) * shipped  # both sum to 1 (the Classifier normalises the network's)
            return e.astype(np.float32, copy=False)
        p = self.alpha * self.head_probs(embedding, shipped) + (1.0 - self.alpha) * shipped
        return (p / p.sum(axis=-1, keepdims=True)).astype(np.float32, copy=False)

    def apply(self, result):
        """A ``Classification`` with the mixed probabilities (the network's kept as ``shipped_probs``)."""
        if result.embedding is None:
            raise ValueError("this classifier outputs no embedding, so a site profile cannot be applied")
        result.shipped_probs = result.probs
        result.probs = self.mix(result.embedding, result.probs)
        return result

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight.astype(np.float32), "bias": self.bias.astype(np.float32),
                "present": self.present.astype(bool), "alpha": np.float32(self.alpha)}


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-sample weights, each class summing to 1/(classes present): a balanced mean loss."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.where(present, 1.0 / np.maximum(counts, 1), 0.0) / present.sum()
    return w[y]


def fit_linear(x: np.ndarray, y: np.ndarray, w0: np.ndarray, b0: np.ndarray, lam: float,
               iters: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced softmax regression, L2-pulled toward (w0, b0): accelerated gradient descent.

    The loss is convex and its gradient's Lipschitz constant is at most
    max|x|^2 / 2 + lam, so a 1/L step with Nesterov momentum converges without a line search.
    """
    x = x.astype(np.float64)
    n_classes = w0.shape[0]
    sw = class_weights(y, n_classes)
    onehot = np.eye(n_classes)[y]
    xa = np.hstack([x, np.ones((len(x), 1))])
    theta0 = np.hstack([w0, b0[:, None]]).astype(np.float64)
    lip = 0.5 * float(np.linalg.norm(xa * np.sqrt(sw)[:, None], 2) ** 2) + lam
    step = 1.0 / max(lip, 1e-8)
    theta, prev = theta0.copy(), theta0.copy()
    for t in range(iters):
        v = theta + (t / (t + 3.0)) * (theta - prev)
        p = _softmax(xa @ v.T)
        grad = ((p - onehot) * sw[:, None]).T @ xa + lam * (v - theta0)
        prev, theta = theta, v - step * grad
    return theta[:, :-1].astype(np.float32), theta[:, -1].astype(np.float32)


def fit(x: np.ndarray, y: np.ndarray, shipped_w: np.ndarray, shipped_b: np.ndarray, *,
        method: str = DEFAULT_METHOD, lam: float = DEFAULT_LAMBDA, alpha: float = DEFAULT_ALPHA,
        name: str = "") -> SiteHead:
    """The head for verified cells ``x`` (N, D) with class indices ``y`` (N,).

    ``anchored``: softmax regression started at and pulled toward the network's own head;
    ``logreg``: the same from zero (the issue's quick check);
    ``prototype``: cosine similarity to each class's mean embedding (no fit, for very few cells).
    """
    n_classes, dim = shipped_w.shape
    if x.shape[1] != dim:
        raise ValueError(f"embedding has {x.shape[1]} values, the network's head reads {dim}")
    present = np.bincount(y, minlength=n_classes) > 0
    if method == "anchored":
        w, b = fit_linear(x, y, shipped_w, shipped_b, lam)
    elif method == "logreg":
        w, b = fit_linear(x, y, np.zeros_like(shipped_w), np.zeros_like(shipped_b), lam)
    elif method == "prototype":
        # cosine to the class mean of unit vectors = a linear map on the unit vector
        u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)
        protos = np.zeros((n_classes, dim), np.float32)
        for c in np.nonzero(present)[0]:
            m = u[y == c].mean(0)
            protos[c] = m / max(np.linalg.norm(m), 1e-8)
        return SiteHead(protos * PROTOTYPE_SCALE, np.zeros(n_classes, np.float32), present, alpha, method, name,
                        normalise=True)
    else:
        raise ValueError(f"unknown head method {method!r} (one of {', '.join(METHODS)})")
    return SiteHead(w, b, present, alpha, method, name)


def from_arrays(arrays: dict, method: str, name: str = "") -> SiteHead:
    return SiteHead(np.asarray(arrays["weight"], np.float32), np.asarray(arrays["bias"], np.float32),
                    np.asarray(arrays["present"], bool), float(arrays["alpha"]), method, name,
                    normalise=method == "prototype")


def shipped_head(onnx_path) -> tuple[np.ndarray, np.ndarray]:
    """The network's own head on the concatenated embedding: each member's linear layer, side by side,
    read from the float ONNX graph (the layer that reads ``embedding_i``'s tensor). Members' logits add,
    which is the head a single linear map can hold (the network averages the members' softmaxes)."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(onnx_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    source = {n.output[0]: n.input[0] for n in g.node
              if n.op_type == "Identity" and n.output[0].startswith("embedding_")}
    ws, bias = [], None
    for name in sorted(source, key=lambda s: int(s.rsplit("_", 1)[1])):
        gemm = next((n for n in g.node if n.op_type == "Gemm" and n.input[0] == source[name]), None)
        if gemm is None:
            raise ValueError(f"no linear layer reads {name} in {onnx_path}")
        w, b = inits[gemm.input[1]], inits[gemm.input[2]]
        trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
        ws.append(w if trans_b else w.T)
        bias = b if bias is None else bias + b
    if not ws:
        raise ValueError(f"{onnx_path} has no embedding outputs")
    return np.concatenate(ws, axis=1).astype(np.float32), bias.astype(np.float32)
