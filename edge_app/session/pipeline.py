"""The live loop: frame -> quality -> motion -> detect -> track -> classify -> tally -> log.

One direction, no back-and-forth: the capture thread
decodes, this loop does the per-frame work, the store writer thread commits,
and a committed cell comes back to update the tally. ``Pipeline.step`` does one
frame and is what ``run`` and ``bench`` both call, so the benchmark measures
the product's own path. The technician's keys and the review strip belong to
``session.corrections``; opening, resuming and finalising the session to
``session.runner``.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

import cv2
import numpy as np

from edge_app.config import ConfigError
from edge_app.counting.tally import Tally
from edge_app.counting.tracker import Track, Tracker, suppress_contained
from edge_app.imaging import preprocess
from edge_app.imaging.motion import StageMotion
from edge_app.imaging.quality import FrameQuality, QualityGate, grey_small
from edge_app.imaging.scale import ScaleMeter
from edge_app.labels import CLASSES, FIVE_PART, OTHER
from edge_app.session.corrections import Corrections, ReviewItem
from edge_app.store.writes import CalibrationWrite, CellWrite, FramesWrite

logger = logging.getLogger(__name__)

STAGES = ("decode", "detect", "classify", "track", "tally", "log")
# The finer breakdown ``bench`` reports beside STAGES: "track" there is quality + motion + tracking,
# "detect" is its three parts; "network" is both networks' own time in the frame.
DETAIL_STAGES = ("decode", "flat_field", "quality", "motion", "detect", "detect_preprocess", "detect_network",
                 "detect_decode", "classify", "classify_network", "track", "tally", "log", "network")
# STAGES' "track" as it always was: quality gate + stage motion + the tracker.
_TRACK_ALL = "track_with_quality_motion"


class Reservoir:
    """A uniform sample of at most ``size`` values (Vitter's algorithm R) plus their exact count and sum.

    Percentiles come from the sample, the mean from the sum, so memory stays fixed however long a
    session runs; the generator is seeded, so a run is reproducible.
    """

    def __init__(self, size: int = 2048, seed: int = 0):
        self.size = size
        self.values = np.zeros(size, np.float64)
        self.count = 0
        self.total = 0.0
        self._rng = random.Random(seed)

    def add(self, v: float) -> None:
        if self.count < self.size:
            self.values[self.count] = v
        else:
            j = self._rng.randrange(self.count + 1)
            if j < self.size:
                self.values[j] = v
        self.count += 1
        self.total += v

    def sample(self) -> np.ndarray:
        return self.values[:min(self.count, self.size)]

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


class StageTimes:
    """Per-frame milliseconds of each stage, for ``bench`` and the HUD (bounded memory: a reservoir each)."""

    def __init__(self, size: int = 2048):
        self.res: dict[str, Reservoir] = {s: Reservoir(size, seed=i)
                                          for i, s in enumerate(DETAIL_STAGES + (_TRACK_ALL,))}

    def add(self, stage: str, ms: float) -> None:
        self.res[stage].add(ms)

    @staticmethod
    def _row(r: Reservoir, mean: bool = False) -> dict[str, float]:
        v = r.sample()
        v = v if len(v) else np.zeros(1)
        row = {"p50_ms": round(float(np.percentile(v, 50)), 3), "p95_ms": round(float(np.percentile(v, 95)), 3)}
        if mean:
            row["mean_ms"] = round(r.mean, 3)
        return row

    def summary(self) -> dict[str, dict[str, float]]:
        """The contract's stages: decode, detect, classify, track (quality + motion + tracking), tally, log."""
        return {s: self._row(self.res[_TRACK_ALL if s == "track" else s]) for s in STAGES}

    def detail(self) -> dict[str, dict[str, float]]:
        """Every measured stage separately, with its mean per frame."""
        return {s: self._row(self.res[s], mean=True) for s in DETAIL_STAGES}

    def mean(self, stage: str) -> float:
        return self.res[stage].mean


@dataclass
class FrameState:
    """What the display needs about the frame just processed."""

    image: np.ndarray
    index: int
    quality: FrameQuality
    tracks: list[Track]
    counting: bool
    message: str = ""


def kept_crop(crop: np.ndarray, side: int) -> np.ndarray:
    """A crop as a track keeps it: at most ``side`` pixels square, its own memory (never a view into
    the frame). ``encode_crop`` and the review strip resize to ``side`` or less anyway, so nothing
    shown or stored changes; a track no longer holds a 200x200 cut of a 640x480 frame."""
    if crop.shape[0] > side or crop.shape[1] > side:
        return cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
    return np.array(crop, copy=True)


@dataclass
class AnalysedFrame:
    """A frame with what needs only it and the frames before it: the flat-field-corrected image, its
    quality verdict and its slide origin (stage motion), and the milliseconds each took."""

    frame: object  # the source's Frame
    image: np.ndarray
    quality: FrameQuality
    origin: np.ndarray  # slide coordinates of this frame's pixel (0, 0)
    ms: dict
    detector_input: object = None  # the detector's ``prepare`` of ``image`` when the frame is worth counting on

    @property
    def index(self) -> int:
        return self.frame.index

    @property
    def decode_ms(self) -> float:
        return self.frame.decode_ms


def load_flat_field(path: str | None) -> preprocess.FlatField | None:
    """The device's blank-field correction named by ``[capture] flat_field``, or None."""
    if not path:
        return None
    try:
        return preprocess.FlatField.load(path)
    except ValueError as exc:
        raise ConfigError(f"capture.flat_field: {exc}") from None


class Pipeline:
    """Per-frame processing of one session. One loop drives ``step``; ``analyse`` may run on the capture
    thread (frames in order), which then alone touches the quality gate and the stage motion."""

    def __init__(self, bundle, writer, tally: Tally, session_id: str, cfg, operator: str | None = None,
                 frames_done: int = 0, flat: preprocess.FlatField | None = None):
        self.bundle = bundle
        self.writer = writer
        self.tally = tally
        self.session_id = session_id
        self.cfg = cfg
        self.operator = operator
        self.gate = QualityGate(cfg.quality)
        self.motion = StageMotion(analysis_width=cfg.tracking.motion_width)
        self.tracker = Tracker(cfg.tracking)
        self.review_threshold = cfg.model.review_threshold
        # Side of the crop a track keeps: what the log stores (the review strip shows less).
        self.crop_side = cfg.store.crop_size
        self.times = StageTimes()
        self.frames = frames_done  # cumulative over the session (resume included)
        self.frames_this_run = 0
        self.pending_five = 0  # five-part cells queued but not yet committed
        self.pending_total = 0
        self.corrections = Corrections(writer, tally, session_id, operator)  # keys, strip, hand corrections
        self.stop_counting = False
        self.paused_frames = 0  # frames not counted on (focus, exposure)
        # The camera's pixel scale, measured from this session's first counted frames when the
        # config or profile does not fix it ([capture] pixel_scale = "auto").
        self.scale_meter = ScaleMeter(bundle.scale_reference) if getattr(bundle, "auto_scale", False) else None
        # Per-device blank-field correction, if this kiosk has been calibrated (loaded by the caller:
        # ``load_flat_field``, so building a pipeline reads no file).
        self.flat = flat

    # -- the hot path -------------------------------------------------------
    def analyse(self, frame, ahead: bool = False) -> AnalysedFrame:
        """Flat field, quality gate and stage motion of one frame. The capture thread runs it on every
        decoded frame, in order, so it overlaps the networks of the frame before (``[inference]
        overlap_analysis``); ``step`` runs it itself for a frame handed in plain. ``ahead`` (the capture
        thread): a frame that passes the gate is also made ready for the detector there."""
        t0 = time.perf_counter()
        img = frame.image if self.flat is None else self.flat.apply(frame.image)
        t1 = time.perf_counter()
        grey = grey_small(img)
        quality = self.gate.assess(img, grey)
        t2 = time.perf_counter()
        self.motion.update(grey, img.shape[1])
        t3 = time.perf_counter()
        prepared = self.bundle.detector.prepare(img) if ahead and quality.ok else None
        return AnalysedFrame(frame, img, quality, self.motion.origin.copy(),
                             {"flat_field": (t1 - t0) * 1000, "quality": (t2 - t1) * 1000,
                              "motion": (t3 - t2) * 1000}, prepared)

    def analyse_ahead(self, frame) -> AnalysedFrame:
        """``analyse`` as the capture thread runs it: the detector's input made there too."""
        return self.analyse(frame, ahead=True)

    def step(self, frame) -> FrameState:
        times = self.times
        a = frame if isinstance(frame, AnalysedFrame) else self.analyse(frame)
        img, quality = a.image, a.quality
        h, w = img.shape[:2]
        times.add("decode", frame.decode_ms)
        for stage, ms in a.ms.items():
            times.add(stage, ms)
        t_track = 0.0

        counting = quality.ok and not self.stop_counting and not self.target_pending_reached
        self.paused_frames += not quality.ok
        det_ms = cls_ms = log_ms = net_ms = cls_net_ms = 0.0
        det_parts = {"preprocess": 0.0, "network": 0.0, "decode": 0.0}
        if counting:
            detector = self.bundle.detector
            if self.scale_meter is not None and not self.scale_meter.done:
                self._measure_scale(img)
            t0 = time.perf_counter()
            dets = detector(img, prepared=a.detector_input)
            det_ms = (time.perf_counter() - t0) * 1000
            det_parts = getattr(detector, "last_ms", det_parts)
            if a.detector_input is not None and a.detector_input.scale == detector.scale:
                det_ms += det_parts["preprocess"]  # the stage's whole work, though it ran on the capture thread

            t0 = time.perf_counter()
            dets = dets[suppress_contained(dets.xyxy, dets.score)]
            matches = self.tracker.update(dets, a.origin, frame.index, (w, h))
            t_track += (time.perf_counter() - t0) * 1000

            t0 = time.perf_counter()
            classifier = self.bundle.classifier
            for m in matches:
                if self.tracker.wants_vote(m):
                    crop = preprocess.cell_crop(img, m.box)
                    c = classifier(crop)
                    cls_net_ms += getattr(classifier, "last_network_ms", 0.0)
                    m.track.add_vote(c.probs, m.quality, kept_crop(crop, self.crop_side), c.attention, m.box,
                                     frame.index)
            cls_ms = (time.perf_counter() - t0) * 1000

            t0 = time.perf_counter()
            ready = self.tracker.ready(frame.index)
            t_track += (time.perf_counter() - t0) * 1000

            t0 = time.perf_counter()
            for track in ready:
                self._count(track)
            log_ms = (time.perf_counter() - t0) * 1000
            net_ms = det_parts["network"] + cls_net_ms

        times.add("detect", det_ms)
        times.add("detect_preprocess", det_parts["preprocess"])
        times.add("detect_network", det_parts["network"])
        times.add("detect_decode", det_parts["decode"])
        times.add("classify", cls_ms)
        times.add("classify_network", cls_net_ms)
        times.add("network", net_ms)
        times.add("track", t_track)
        times.add(_TRACK_ALL, t_track + a.ms["quality"] + a.ms["motion"])
        t0 = time.perf_counter()
        self.apply_commits()
        times.add("tally", (time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        self.frames += 1
        self.frames_this_run += 1
        if self.frames % 30 == 0:
            self.writer.submit(FramesWrite(self.session_id, self.frames))
        times.add("log", log_ms + (time.perf_counter() - t0) * 1000)
        return FrameState(img, frame.index, quality, self.tracker.visible(frame.index), counting,
                          "" if quality.ok else quality.reason)

    @property
    def target_pending_reached(self) -> bool:
        """Stop queuing cells once committed + queued five-part cells reach the target."""
        return self.tally.total + self.pending_five >= self.tally.target

    def _count(self, track: Track) -> None:
        if self.target_pending_reached:
            return
        probs = track.probs
        label = CLASSES[int(np.argmax(probs))]
        conf = float(np.max(probs))
        track.counted = True
        box = track.best_box if track.best_box is not None else track.box
        self.pending_total += 1
        if label != OTHER:
            self.pending_five += 1
        self.writer.submit(CellWrite(
            self.session_id, label, probs={c: round(float(p), 4) for c, p in zip(CLASSES, probs)},
            confidence=round(conf, 4), box=box, slide_xy=(float(track.center[0]), float(track.center[1])),
            frame_index=track.best_frame if track.best_frame is not None else track.last_frame,
            track_id=track.id, flagged=conf < self.review_threshold, crop_rgb=track.best_crop), track)

    def flush(self) -> None:
        """Source ended: count every confirmed track still waiting for votes."""
        for track in self.tracker.flush():
            self._count(track)

    # -- commits coming back from the writer ---------------------------------
    def _measure_scale(self, img) -> None:
        """Feed the scale meter; a new estimate takes effect from this frame and is stored with the session."""
        est = self.scale_meter.add(img)
        if est is None:
            return
        self.bundle.detector.scale = est.factor
        state = "measured" if self.scale_meter.done else "provisional"
        logger.info("pixel scale %s: factor %.2f (red cells %.1f px, %d cells, confidence %.2f)", state,
                    est.factor, est.rbc_diameter_px, est.n_cells, est.confidence)
        self.writer.submit(CalibrationWrite(self.session_id,
                                            {"pixel_scale": {"mode": "auto", "state": state, **est.as_dict()}}))

    def apply_commits(self) -> list:
        done = self.writer.done()
        for d in done:
            if d.kind == "cell":
                track: Track = d.tag
                track.cell_id = d.value
                self.pending_total -= 1
                if d.write.label != OTHER:
                    self.pending_five -= 1
                self.tally.add(d.value, d.write.label, d.write.confidence, d.write.flagged)
                self.corrections.remember(ReviewItem(d.value, d.write.label, d.write.confidence,
                                                     d.write.flagged, track.best_crop, track.best_attention))
                # Stored and handed to the review strip: the track (remembered for back-tracking
                # for max_age_frames) need not hold its picture any longer.
                track.best_crop = track.best_attention = None
                logger.debug("counted cell %d (%s), five-part total %d", d.value, d.write.label, self.tally.total)
            elif d.kind in ("manual", "reclassify", "undo"):
                self.corrections.applied(d)
            elif d.kind == "error":
                self.stop_counting = True
                self.corrections.event("DATABASE WRITE FAILED: counting stopped")
        return done

    # -- the technician's side (session.corrections), as the runner and the screen reach it ---------
    def review_strip(self, n: int) -> list[ReviewItem]:
        return self.corrections.review_strip(n)

    def handle_key(self, key: str) -> bool:
        return self.corrections.handle_key(key, self.frames)

    @property
    def review(self) -> list[ReviewItem]:
        return self.corrections.review

    @property
    def last_cell_id(self) -> int | None:
        return self.corrections.last_cell_id

    def status_text(self) -> str:
        d = self.tally.differential()
        return " ".join(f"{k[:4]} {d[k]['count']}" for k in FIVE_PART) + f" | total {self.tally.total}"
