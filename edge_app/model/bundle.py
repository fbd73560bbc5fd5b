"""The shipped model at run time: manifest, detector and classifier.

``ModelBundle`` reads ``models/manifest.json``, checks every file against its
sha256 (a corrupted model is refused with a message, never run), and builds
the detector and classifier on the chosen backend. ``Detector`` and
``Classifier`` wrap a backend with the shared preprocessing and the output
decoding, so CLI verbs, the live pipeline and the self-test use one path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_app import fsutil, paths
from edge_app.backends import Backend, BackendError, resolve_backend_name
from edge_app.detections import Detection, Detections  # noqa: F401  (Detection: its rows, for importers)
from edge_app.imaging import boxrefine, preprocess, tiling
from edge_app.imaging.scale import ScaleEstimate, ScaleReference, detector_scale, is_unit, measure_scale
from edge_app.labels import CLASSES

logger = logging.getLogger(__name__)

# The detector's score threshold unless the config or a site profile sets one ([model] detect_threshold).
DEFAULT_DETECT_THRESHOLD = 0.35

def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Manifest:
    dir: Path
    data: dict

    @classmethod
    def load(cls, model_dir: str | Path | None = None) -> "Manifest":
        d = Path(model_dir) if model_dir else paths.shipped_models_dir()
        path = d / "manifest.json"
        if not path.is_file():
            raise BackendError(f"no model manifest at {path} (point [model] dir at a folder with manifest.json)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise BackendError(f"model manifest {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or tuple(data.get("classes", ())) != CLASSES:
            got = data.get("classes") if isinstance(data, dict) else None
            raise BackendError(f"model manifest classes {got} differ from this app's {list(CLASSES)}")
        problem = _manifest_problem(data)
        if problem:
            raise BackendError(f"model manifest {path} is incomplete: {problem} (reinstall the model folder "
                               "from the release)")
        return cls(d, data)

    @property
    def version(self) -> str:
        return str(self.data.get("version", "unknown"))

    def entry(self, net: str) -> dict:
        return self.data["models"][net]

    def file(self, net: str, kind: str, verify: bool = True) -> Path:
        entry = self.entry(net)
        name = entry["files"].get(kind)
        if not name:
            raise BackendError(f"manifest has no '{kind}' file for the {net}")
        try:
            path = self.dir / fsutil.safe_name(name, f"manifest file name for the {net} ({kind})")
        except fsutil.UnsafePathError as exc:  # a name like '../../x.onnx' would read or copy outside the folder
            raise BackendError(f"{exc}: the model folder {self.dir} is not a release, do not install it") from None
        if not path.is_file():
            raise BackendError(f"model file missing: {path} (restore models/ from the release)")
        if verify:
            expected = entry["sha256"][name]
            actual = sha256_file(path)
            if actual != expected:
                raise BackendError(f"model file {path} is corrupt or was replaced: sha256 {actual[:12]}… "
                                   f"!= manifest {expected[:12]}… (reinstall the model folder)")
        return path

    def output_shapes(self, net: str) -> list[tuple[int, ...]]:
        return [tuple(o["shape"]) for o in self.entry(net)["outputs"]]

    def output_names(self, net: str) -> list[str]:
        return [str(o.get("name", "")) for o in self.entry(net)["outputs"]]

    @property
    def has_embedding(self) -> bool:
        """Whether the classifier outputs its pooled features (``embedding_*``, which a site profile reads)."""
        return any(n.startswith("embedding_") for n in self.output_names("classifier"))

    @property
    def tta_views(self) -> int:
        """Test-time views the classifier was validated with (1 for manifests before 1.1)."""
        return int(self.entry("classifier").get("tta_views", 1))

    @property
    def stain_norm(self) -> bool:
        """Whether the classifier was trained on stain-density-referenced crops (absent = no)."""
        return bool(self.entry("classifier").get("preprocess", {}).get("stain_norm", False))


def _manifest_problem(data: dict) -> str | None:
    """What a manifest lacks that the runtime reads, or None: checked once at load so a
    hand-edited or truncated manifest is one clear message, not a KeyError mid-run."""
    models = data.get("models")
    if not isinstance(models, dict):
        return "no 'models' table"
    for net in ("detector", "classifier"):
        entry = models.get(net)
        if not isinstance(entry, dict):
            return f"no '{net}' entry under 'models'"
        for key, kind in (("files", dict), ("sha256", dict), ("outputs", list), ("input", dict)):
            if not isinstance(entry.get(key), kind):
                return f"models.{net}.{key} is missing or not a {kind.__name__}"
        for name in entry["files"].values():
            try:
                fsutil.safe_name(name, f"models.{net}.files entry")
            except fsutil.UnsafePathError as exc:  # never read or copy outside the model folder
                return str(exc)
        missing = sorted(set(entry["files"].values()) - set(entry["sha256"]))
        if missing:
            return f"models.{net}.sha256 has no hash for {', '.join(missing)}"
        if not all(isinstance(o, dict) and isinstance(o.get("shape"), list) for o in entry["outputs"]):
            return f"models.{net}.outputs lack a 'shape'"
        if not isinstance(entry["input"].get("shape"), list):
            return f"models.{net}.input has no 'shape'"
    if not isinstance(models["detector"].get("stride"), int):
        return "models.detector.stride is missing or not a whole number"
    return None


def create_backend(manifest: Manifest, net: str, backend: str = "auto", precision: str = "int8",
                   threads: int = 2, engine_dir: str | Path | None = None) -> Backend:
    """One backend for one network of the bundle."""
    name = resolve_backend_name(backend)
    if name == "tflite":
        from edge_app.backends.tflite import TFLiteBackend
        kind = "tflite_int8" if precision == "int8" else "tflite_fp32"
        return TFLiteBackend(manifest.file(net, kind), manifest.output_shapes(net), threads=threads,
                             output_names=manifest.output_names(net))
    if engine_dir is None:
        raise BackendError("the TensorRT backend needs an engine folder (edge_app.paths.engine_dir)")
    from edge_app.backends.tensorrt import TensorRTBackend
    return TensorRTBackend.from_manifest(manifest, net, precision=precision, engine_dir=engine_dir)


@dataclass
class Classification:
    probs: np.ndarray  # (len(CLASSES),) float32, sums to 1
    attention: np.ndarray = field(repr=False, default=None)  # (h, w) float32 in 0..1
    # (D,) float32: the members' pooled features, concatenated, mean over the views; None for a model without them
    embedding: np.ndarray | None = field(repr=False, default=None)
    # the network's own probabilities when a site profile mixed its head in (``probs`` is then the mix)
    shipped_probs: np.ndarray | None = field(repr=False, default=None)

    @property
    def label(self) -> str:
        return CLASSES[int(np.argmax(self.probs))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.probs))

    def probs_dict(self) -> dict[str, float]:
        return {c: round(float(p), 4) for c, p in zip(CLASSES, self.probs)}


@dataclass
class DetectorInput:
    """One frame made ready for the detector network (``Detector.prepare``): the input tensor(s) at the
    scale they were made for, the background estimate the refinement shares, and how long it took."""

    scale: float
    inputs: list  # one (1, H, W, 3) tensor, as the backend takes it (``prepare_input``); one per window when tiled
    background: np.ndarray | None
    ms: float
    letterbox: preprocess.Letterbox | None = None  # the plain path: how to map boxes back
    windows: list | None = None  # the tiled path: the windows, and frame px -> network px
    factor: float = 1.0


class Detector:
    """Whole frame -> leukocyte boxes (CenterNet-style heatmap + ltrb distances).

    With ``flip`` the frame is also run mirrored left-right and the two
    heatmaps and box distances are averaged before decoding (one more backend
    call per frame; chosen on the val frames, see models/EVALUATION.md).

    ``box_scale`` is a per-camera calibration: every box is scaled about its
    centre by it, in frame pixels, before anything downstream (tracking, the
    tally, the crop the classifier sees, the display) uses it. A camera whose
    cells the network boxes too large gets a factor below 1, fitted on that
    camera's training frames (``scripts.training.box_fit``).

    ``refine`` (off unless a device's calibration turns it on) then tightens
    each box to the stained cell it contains (``edge_app.imaging.boxrefine``).

    ``scale`` is the camera's magnification against the training frames' (a
    site profile's or ``[capture] pixel_scale``, or measured from the frames by
    ``edge_app.imaging.scale.measure_scale``): the frame is resized by it on top
    of the letterbox, so its cells reach the network at the trained size. At 1
    (the default, and every camera inside the trained range) the frame is
    letterboxed as it always was; above 1 the enlarged frame is cut into
    overlapping detector-sized windows (``edge_app.imaging.tiling``), each run
    through the network, and the boxes merged (NMS) and mapped back to the
    frame's own pixels, so crops for the classifier come from the original frame.
    """

    def __init__(self, backend: Backend, stride: int, threshold: float = 0.35, nms_iou: float = 0.4,
                 flip: bool = False, vote: bool = True, box_scale: float = 1.0, refine: bool = False,
                 scale: float = 1.0):
        self.backend = backend
        self.stride = stride
        self.threshold = threshold
        self.nms_iou = nms_iou
        self.flip = flip
        self.vote = vote
        self.box_scale = box_scale
        self.refine = refine
        self.scale = scale
        # Milliseconds of the last call's parts (bench and the HUD read them).
        self.last_ms = {"preprocess": 0.0, "network": 0.0, "decode": 0.0}

    @classmethod
    def for_manifest(cls, backend: Backend, manifest: "Manifest", threshold: float = 0.35,
                     flip: bool | None = None, box_scale: float = 1.0, refine: bool = False,
                     scale: float = 1.0) -> "Detector":
        """The detector as its manifest says it was validated (stride, mirrored second pass, box vote;
        manifests before ``box_vote`` was recorded all voted)."""
        entry = manifest.entry("detector")
        flip = bool(entry.get("tta_flip", False)) if flip is None else flip
        return cls(backend, int(entry["stride"]), threshold, flip=flip, vote=bool(entry.get("box_vote", True)),
                   box_scale=box_scale, refine=refine, scale=scale)

    def raw(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Network input -> (H, W) heatmap and (H, W, 4) ltrb, mirror-averaged when ``flip``."""
        t0 = time.perf_counter()
        heat, ltrb = self.backend.infer(x)
        network = time.perf_counter() - t0
        heat, ltrb = heat[0, ..., 0], ltrb[0]
        if self.flip:
            xf = np.ascontiguousarray(x[:, :, ::-1])
            t0 = time.perf_counter()
            hf, lf = self.backend.infer(xf)
            network += time.perf_counter() - t0
            # mirror back: columns reverse and left/right distances swap
            heat = (heat + hf[0, :, ::-1, 0]) / 2
            ltrb = (ltrb + lf[0, :, ::-1][..., [2, 1, 0, 3]]) / 2
        self.last_ms["network"] = network * 1000
        return heat, ltrb

    def prepare(self, frame_rgb: np.ndarray, background: np.ndarray | None = None) -> "DetectorInput":
        """The frame made ready for the network at the detector's current scale: the live loop does this
        on the capture thread, beside decoding, so the loop itself only runs the network and decodes.
        Reads ``scale`` and ``refine`` only, so it may run on another thread than ``__call__``."""
        t0 = time.perf_counter()
        scale = self.scale
        if self.refine and background is None:  # estimated once: the network input and the refinement share it
            background = preprocess.estimate_background(frame_rgb)
        if is_unit(scale):
            x, lb = preprocess.detector_input(frame_rgb, background)
            return DetectorInput(scale, [self.backend.prepare_input(x)], background,
                                 (time.perf_counter() - t0) * 1000, letterbox=lb)
        bg = preprocess.estimate_background(frame_rgb) if background is None else background
        eff = detector_scale(frame_rgb.shape) * scale  # frame px -> network px
        inputs, windows = tiling.windows_input(frame_rgb, eff, bg)
        return DetectorInput(scale, [self.backend.prepare_input(x) for x in inputs], background,
                             (time.perf_counter() - t0) * 1000, windows=windows, factor=eff)

    def __call__(self, frame_rgb: np.ndarray, background: np.ndarray | None = None,
                 threshold: float | None = None, prepared: "DetectorInput | None" = None) -> Detections:
        """Boxes in frame pixels with score >= ``threshold`` (default: the detector's own). ``prepared``:
        this frame's ``prepare`` (used unless the scale changed since; then prepared again)."""
        if prepared is None or prepared.scale != self.scale:
            prepared = self.prepare(frame_rgb, background)
        self.last_ms["preprocess"] = prepared.ms
        if prepared.windows is not None:
            return self._tiled(frame_rgb, prepared, threshold)
        t1 = time.perf_counter()
        heat, ltrb = self.raw(prepared.inputs[0])
        t2 = time.perf_counter()
        try:
            return self._decode(frame_rgb, heat, ltrb, prepared.letterbox, prepared.background, threshold)
        finally:
            self.last_ms["decode"] = (time.perf_counter() - t2) * 1000 + (t2 - t1) * 1000 - self.last_ms["network"]

    def _decode(self, frame_rgb, heat, ltrb, lb, background, threshold) -> Detections:
        thr = self.threshold if threshold is None else threshold
        boxes, scores = decode_detections(heat, ltrb, self.stride, thr, self.nms_iou, self.vote)
        if not len(boxes):
            return Detections.empty()
        return self._finish(frame_rgb, lb.to_frame(boxes), scores, background)

    def _tiled(self, frame_rgb, prepared: "DetectorInput", threshold) -> Detections:
        """The frame resized by ``scale`` and run window by window; boxes merged, in frame pixels."""
        eff = prepared.factor
        thr = self.threshold if threshold is None else threshold
        all_boxes, all_scores, network, decode = [], [], 0.0, 0.0
        for x, win in zip(prepared.inputs, prepared.windows):
            heat, ltrb = self.raw(x)
            network += self.last_ms["network"]
            t1 = time.perf_counter()
            boxes, scores = decode_detections(heat, ltrb, self.stride, thr, self.nms_iou, self.vote)
            keep = tiling.keep_whole(boxes, win)
            all_boxes.append((boxes[keep] + np.array([win.x0, win.y0, win.x0, win.y0], np.float32)) / eff)
            all_scores.append(scores[keep])
            decode += time.perf_counter() - t1
        self.last_ms["network"] = network
        t1 = time.perf_counter()
        boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
        keep = nms(boxes, scores, self.nms_iou)  # a cell inside two windows' overlap is found twice
        out = self._finish(frame_rgb, boxes[keep], scores[keep], prepared.background) if keep else Detections.empty()
        self.last_ms["decode"] = (decode + time.perf_counter() - t1) * 1000
        return out

    def _finish(self, frame_rgb, boxes, scores, background) -> Detections:
        """Frame-pixel boxes -> detections: per-camera box scale, clipped to the frame, refined."""
        boxes = scale_boxes(boxes, self.box_scale)
        h, w = frame_rgb.shape[:2]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w - 1)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h - 1)
        if self.refine:
            boxes = boxrefine.refine_boxes(frame_rgb, boxes, background=background)
        return Detections(boxes, scores)


# Test-time views of a crop: a cell has no "up", so the dihedral group of the
# square is free extra evidence. Ordered so that every prefix of length 1, 2, 4
# and 8 is a group (identity; + 180 degrees; + both mirrors; + the 90 degree turns).
VIEWS = (
    lambda x: x,
    lambda x: x[:, ::-1, ::-1],
    lambda x: x[:, :, ::-1],
    lambda x: x[:, ::-1, :],
    lambda x: np.rot90(x, 1, axes=(1, 2)),
    lambda x: np.rot90(x, 3, axes=(1, 2)),
    lambda x: x.transpose(0, 2, 1, 3),
    lambda x: x[:, ::-1, ::-1].transpose(0, 2, 1, 3),
)
TTA_CHOICES = (1, 2, 4, 8)


class Classifier:
    """Cell crop -> class probabilities + last CBAM spatial-attention map.

    With ``views`` > 1 the probabilities are the mean over that many rotations
    and mirrors of the crop (one backend call each, batch 1, so the same engine
    serves both); the attention map is always that of the crop as seen.
    """

    def __init__(self, backend: Backend, views: int = 1, stain_norm: bool = False, site=None):
        if views not in TTA_CHOICES:
            raise BackendError(f"classifier views must be one of {TTA_CHOICES}, not {views}")
        self.backend = backend
        self.views = views
        self.stain_norm = stain_norm
        self.site = site  # an edge_app.site.SiteHead mixed into every result, or None (the network alone)
        self.last_network_ms = 0.0  # the backend's own time in the last call (all views)

    @classmethod
    def for_manifest(cls, backend: Backend, manifest: "Manifest", views: int | None = None,
                     site=None) -> "Classifier":
        """The classifier as its manifest says it was validated (views, preprocessing)."""
        return cls(backend, views or manifest.tta_views, manifest.stain_norm, site)

    def __call__(self, crop_rgb: np.ndarray) -> Classification:
        x = preprocess.classifier_input(crop_rgb, stain_norm=self.stain_norm)
        total, attention, embedding = None, None, None
        network = 0.0
        for view in VIEWS[:self.views]:
            xv = np.ascontiguousarray(view(x))
            t0 = time.perf_counter()
            probs, att, *emb = self.backend.infer(xv)
            network += time.perf_counter() - t0
            p = np.clip(probs[0].astype(np.float32), 0, None)
            p = p / p.sum() if p.sum() > 0 else np.full_like(p, 1.0 / len(p))
            total = p if total is None else total + p
            if emb:  # pooled features of each member: a rotated cell has the same ones, so the views average
                e = np.concatenate([o.reshape(-1) for o in emb]).astype(np.float32)
                embedding = e if embedding is None else embedding + e
            if attention is None:
                attention = att[0, ..., 0]
        self.last_network_ms = network * 1000
        result = Classification(total / self.views, attention,
                                None if embedding is None else embedding / self.views)
        return result if self.site is None else self.site.apply(result)


# The 3x3 neighbourhood of a heatmap cell, row by row (its centre is entry 4): (9, 1) offsets.
_NEIGH_DY = np.repeat(np.arange(-1, 2), 3)[:, None]
_NEIGH_DX = np.tile(np.arange(-1, 2), 3)[:, None]


def decode_detections(heat: np.ndarray, ltrb: np.ndarray, stride: int, threshold: float,
                      nms_iou: float, vote: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Peaks of the (H, W) heatmap above threshold -> boxes in network pixels.

    A peak is a cell at least as high as its 8 neighbours. With ``vote`` each
    peak's box is the heat-weighted mean of the boxes regressed at the peak and
    its 8 neighbours: training regresses a box at every cell near a cell's
    centre, so the neighbours are extra votes; without it, the peak's own box.
    Only the cells above threshold and their neighbourhoods are looked at (a
    frame has a few), so the cost does not grow with the map.
    """
    h, w = heat.shape
    empty = np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    ys, xs = np.nonzero(heat >= threshold)
    if not len(ys):
        return empty
    py, px = ys[None, :] + _NEIGH_DY, xs[None, :] + _NEIGH_DX  # (9, P)
    inside = (py >= 0) & (py < h) & (px >= 0) & (px < w)
    py, px = py.clip(0, h - 1), px.clip(0, w - 1)
    hv = heat[py, px]
    peak = (hv[4] >= np.where(inside, hv, -1.0)).all(axis=0)  # outside the grid counts as -1
    if not peak.any():
        return empty
    py, px, hv, inside = py[:, peak], px[:, peak], hv[:, peak], inside[:, peak]
    scores = hv[4]
    if not vote:
        py, px, inside = py[4:5], px[4:5], inside[4:5]
    cx = (px.astype(np.float32) + 0.5) * stride
    cy = (py.astype(np.float32) + 0.5) * stride
    d = ltrb[py, px].astype(np.float32) * stride
    cell = np.stack([cx - d[..., 0], cy - d[..., 1], cx + d[..., 2], cy + d[..., 3]], axis=-1)
    if vote:
        wt = np.where(inside, np.clip(hv, 0, None), 0).astype(heat.dtype)[..., None]  # outside: weight 0
        prod = wt * np.where(inside[..., None], cell, np.float32(0))
        # Summed in the neighbourhood's order (accumulate is sequential): float32 sums depend on it.
        acc = np.add.accumulate(prod, axis=0)[-1]
        wsum = np.add.accumulate(wt, axis=0)[-1]
        boxes = (acc / np.maximum(wsum, 1e-6)).astype(np.float32)
    else:
        boxes = cell[0].astype(np.float32)
    keep = nms(boxes, scores, nms_iou)
    return boxes[keep], scores[keep].astype(np.float32)


def scale_boxes(boxes: np.ndarray, factor: float) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2 boxes with both sides scaled by ``factor`` about their centres."""
    if factor == 1.0:
        return boxes
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (factor / 2)
    return np.concatenate([centre - half, centre + half], axis=1).astype(boxes.dtype)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    order = np.argsort(-scores)
    keep: list[int] = []
    while len(order):
        i = order[0]
        keep.append(int(i))
        if len(order) == 1:
            break
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
        ious = inter / np.maximum(area(boxes[i]) + area(boxes[rest]) - inter, 1e-6)
        order = rest[ious < iou]
    return keep


class ModelBundle:
    """Detector + classifier of one manifest on one backend.

    ``scale`` is the camera's magnification against the detector's training
    frames (``Detector``'s ``scale``): a number fixes it (a site profile's
    measured value, or ``[capture] pixel_scale``); ``"auto"`` leaves it at 1
    until the caller measures it from its own frames with ``measure_scale``
    (``detect``: each image size; ``run``: the session's first frames). A site
    profile whose ``pixel_scale`` is set (its ``ScaleEstimate.factor``) takes
    the place of "auto"; a number given here still wins. Likewise the detector
    threshold: a number given here (``[model] detect_threshold`` set in the
    config), else the one a profile fitted on its frames, else the default.
    """

    def __init__(self, model_dir: str | Path | None = None, backend: str = "auto", precision: str = "int8",
                 threads: int = 2, detect_threshold: float | None = None, engine_dir: str | Path | None = None,
                 tta_views: int | None = None, detector_flip: bool | None = None, box_scale: float = 1.0,
                 box_refine: bool = False, site: str | Path | None = None, data_dir: str | Path | None = None,
                 scale: float | str = 1.0):
        self.manifest = Manifest.load(model_dir)
        # A site profile is checked before any network loads: a refused one stops here with its reason.
        self.site = None
        if site:
            from edge_app.site import profile as site_profile

            self.site = site_profile.load(site, self.manifest)
        # a profile that recorded its camera's measured scale fixes it, unless a number was given
        profile_scale = getattr(self.site, "pixel_scale", None)
        if scale == "auto" and profile_scale:
            scale = float(profile_scale)
        # None: the threshold a profile fitted on its frames, else the shipped default; a number wins
        profile_threshold = getattr(self.site, "detect_threshold", None)
        self.threshold_source = "config" if detect_threshold is not None else (
            "site profile" if profile_threshold is not None else "default")
        if detect_threshold is None:
            detect_threshold = profile_threshold if profile_threshold is not None else DEFAULT_DETECT_THRESHOLD
        self.backend_name = resolve_backend_name(backend)
        # "auto": measured once per CPU and model (edge_app.model.precision), cached in the data dir
        from edge_app.model import precision as auto_precision

        precision = auto_precision.resolve(precision, self.backend_name, self.manifest, paths.data_dir(data_dir),
                                           threads)
        self.precision = precision
        det_backend = create_backend(self.manifest, "detector", self.backend_name, precision, threads, engine_dir)
        cls_backend = create_backend(self.manifest, "classifier", self.backend_name, precision, threads, engine_dir)
        self.detector = Detector.for_manifest(det_backend, self.manifest, detect_threshold, detector_flip, box_scale,
                                              box_refine, 1.0 if scale == "auto" else float(scale))
        self.auto_scale = scale == "auto"
        self.scale_reference = ScaleReference.from_manifest(self.manifest.data)
        self.classifier = Classifier.for_manifest(cls_backend, self.manifest, tta_views,
                                                  self.site.head if self.site else None)

    @classmethod
    def from_config(cls, cfg, data_dir: str | Path, live: bool = False) -> "ModelBundle":
        """The bundle an ``AppConfig`` asks for (every verb builds it this way). ``live`` (run, bench): the
        mirrored pass and crop views of ``[model] live_detector_flip`` / ``live_tta_views`` where set."""
        m = cfg.model
        flip = m.live_detector_flip if live and m.live_detector_flip is not None else m.detector_flip
        views = m.live_tta_views if live and m.live_tta_views is not None else m.tta_views
        # a threshold the config file or command line sets wins over a profile's; the default does not
        threshold = cfg.model.detect_threshold if "detect_threshold" in cfg.model.model_fields_set else None
        return cls(cfg.model.dir, backend=cfg.inference.backend, precision=cfg.inference.precision,
                   threads=cfg.inference.threads, detect_threshold=threshold,
                   engine_dir=paths.engine_dir(cfg.inference.engine_dir, data_dir), tta_views=views,
                   detector_flip=flip, box_scale=cfg.model.box_scale,
                   box_refine=cfg.model.box_refine, data_dir=data_dir, scale=cfg.capture.pixel_scale,
                   site=cfg.model.site)

    @property
    def version(self) -> str:
        return self.manifest.version

    def measure_scale(self, frames_rgb: list[np.ndarray]) -> ScaleEstimate:
        """The scale these frames call for against this model's trained cell size (``edge_app.imaging.scale``)."""
        return measure_scale(frames_rgb, self.scale_reference)

    def close(self) -> None:
        self.detector.backend.close()
        self.classifier.backend.close()
