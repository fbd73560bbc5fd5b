"""Tracks in slide coordinates: each leukocyte is counted once.

A detection's box centre plus the frame's slide origin (``StageMotion``) is
its position on the slide. Detections are matched greedily, nearest first, to
tracks whose slide position is in (or near) the current view and that were
seen within ``max_age_frames``; the gate is ``match_distance`` x the cell
size. Because tracks live in slide coordinates and are remembered after they
leave the view, a cell that slides out and comes back when the technician
backs up meets its old track again instead of starting a new one.

A track is confirmed after ``confirm_hits`` matched frames, provided one of
its detections scored at least ``confirm_score``, or after
``confirm_hits_weak`` frames whatever its scores (hysteresis: a few weak
detections keep a track alive but do not make a cell; a persistent one does). Its class is the
mean of its per-frame classifier probabilities (temporal voting) over its
best crops: a crop is "clean" when the classifier's square crop lies inside
the frame, "whole" when only the box does, "edge" when the box is cut by the
border; only votes of the best quality the track reached are averaged. It is
counted once it is confirmed and has ``votes_per_track`` clean votes, or
once it has left the view for ``count_after_lost_frames`` frames, or when the
source ends (``flush``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from edge_app.config import TrackingConfig
from edge_app.detections import Detections
from edge_app.imaging.preprocess import square_box

logger = logging.getLogger(__name__)


@dataclass
class Vote:
    probs: np.ndarray
    quality: int  # 2 clean (crop square inside the frame), 1 whole (box inside), 0 edge (box cut)


@dataclass
class Track:
    id: int
    center: np.ndarray  # slide coordinates (x, y)
    size: float  # mean box side, pixels
    box: np.ndarray  # last box, frame pixels
    first_frame: int
    last_frame: int
    score: float
    hits: int = 1
    misses: int = 0  # consecutive frames in view without a match
    had_whole: bool = False
    classified: int = 0
    votes: list[Vote] = field(default_factory=list)
    confirmed: bool = False
    counted: bool = False
    cell_id: int | None = None  # database id once committed
    seen_with: set = field(default_factory=set, repr=False)  # ids of tracks seen in the same frame
    best_crop: np.ndarray | None = field(default=None, repr=False)
    best_attention: np.ndarray | None = field(default=None, repr=False)
    best_box: np.ndarray | None = None
    best_frame: int | None = None
    _best_q: float = -1.0

    @property
    def best_quality(self) -> int:
        return max((v.quality for v in self.votes), default=-1)

    @property
    def clean_votes(self) -> int:
        return sum(v.quality == 2 for v in self.votes)

    def votes_at(self, quality: int) -> int:
        return sum(v.quality == quality for v in self.votes)

    @property
    def probs(self) -> np.ndarray | None:
        """Temporal vote: mean probabilities of the best-quality crops the track has."""
        best = self.best_quality
        use = [v.probs for v in self.votes if v.quality == best]
        if not use:
            return None
        p = np.mean(np.stack(use), axis=0)
        return (p / p.sum()).astype(np.float32)

    def add_vote(self, probs: np.ndarray, quality: int, crop=None, attention=None, box=None,
                 frame: int | None = None) -> None:
        quality = int(quality)
        self.classified += 1
        self.votes.append(Vote(np.asarray(probs, dtype=np.float32), quality))
        # Keep the crop the log and the review strip show: the most confident
        # crop of the best quality (a clean crop always beats a cut one).
        q = float(np.max(probs)) + quality
        if q > self._best_q:
            self._best_q = q
            # Copies, never views: a crop sliced from the frame would keep the whole frame alive for as
            # long as the track is remembered (max_age_frames), which grew memory without bound.
            self.best_crop = None if crop is None else np.array(crop, copy=True, order="C")
            self.best_attention = None if attention is None else np.array(attention, copy=True, order="C")
            self.best_box = None if box is None else np.asarray(box, dtype=np.float32).copy()
            self.best_frame = frame


def suppress_contained(boxes: np.ndarray, scores, overlap: float = 0.6) -> list[int]:
    """Indices to keep after dropping boxes that lie mostly inside a better one.

    IoU-based NMS keeps a small box inside a large one (their IoU is small):
    a detector sometimes boxes a whole leukocyte and, separately, its nucleus
    lobe. Intersection over the smaller box's area catches that; the
    lower-scoring box of such a pair goes.
    """
    n = len(boxes)
    if n < 2:
        return list(range(n))
    b = np.asarray(boxes, dtype=np.float32)
    area = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    order = np.argsort(-np.asarray(scores, dtype=np.float32))
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            iw = min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0])
            ih = min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1])
            if iw > 0 and ih > 0 and iw * ih / max(1e-6, min(area[i], area[j])) > overlap:
                ok = False
                break
        if ok:
            keep.append(int(i))
    return sorted(keep)


@dataclass
class Match:
    track: Track
    box: np.ndarray  # frame pixels
    score: float
    whole: bool  # box inside the frame
    new: bool
    quality: int = 1  # 2 clean, 1 whole, 0 edge (see Vote)


class Tracker:
    def __init__(self, cfg: TrackingConfig | None = None):
        # The defaults live in TrackingConfig only, so that a Tracker built
        # without a config behaves exactly like the shipped configuration.
        cfg = cfg or TrackingConfig()
        self.confirm_hits = cfg.confirm_hits
        self.confirm_score = cfg.confirm_score
        self.confirm_hits_weak = cfg.confirm_hits_weak
        self.match_distance = cfg.match_distance
        self.max_age = cfg.max_age_frames
        self.votes_per_track = cfg.votes_per_track
        self.max_classify = cfg.max_classify_per_track
        self.count_after_lost = cfg.count_after_lost_frames
        self.drop_unconfirmed_after = cfg.drop_unconfirmed_after
        self.dedupe_distance = cfg.dedupe_distance
        self.edge_px = 3.0
        self.tracks: list[Track] = []
        self._next_id = 1

    def _in_view(self, t: Track, origin: np.ndarray, w: int, h: int, margin: float = 0.0) -> bool:
        x, y = t.center - origin
        return -margin <= x <= w + margin and -margin <= y <= h + margin

    def update(self, detections: Detections, origin: np.ndarray, frame_index: int,
               frame_size: tuple[int, int]) -> list[Match]:
        """Match this frame's detections (frame px) to tracks; returns one Match per detection, in order."""
        w, h = frame_size
        boxes = detections.xyxy
        scores = [float(s) for s in detections.score]
        origin = np.asarray(origin, dtype=np.float64)
        centers = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1) + origin \
            if len(boxes) else np.zeros((0, 2))
        sizes = ((boxes[:, 2] - boxes[:, 0]) + (boxes[:, 3] - boxes[:, 1])) / 2 if len(boxes) else np.zeros(0)
        whole = [bool(b[0] > self.edge_px and b[1] > self.edge_px and b[2] < w - 1 - self.edge_px
                      and b[3] < h - 1 - self.edge_px) for b in boxes]
        quality = []
        for b, wh in zip(boxes, whole):
            x1, y1, x2, y2 = square_box(b)
            quality.append(2 if (wh and x1 >= 0 and y1 >= 0 and x2 <= w and y2 <= h) else int(wh))

        cands = [t for t in self.tracks
                 if frame_index - t.last_frame <= self.max_age and self._in_view(t, origin, w, h, t.size)]
        pairs = []
        for ti, t in enumerate(cands):
            if not len(boxes):
                break
            d = np.linalg.norm(centers - t.center, axis=1)
            gate = self.match_distance * np.maximum(sizes, t.size)
            for di in np.nonzero(d <= gate)[0]:
                pairs.append((float(d[di]), ti, int(di)))
        pairs.sort()
        used_t, det_track = set(), {}
        for _, ti, di in pairs:
            if ti in used_t or di in det_track:
                continue
            used_t.add(ti)
            det_track[di] = cands[ti]

        matches: list[Match] = []
        for di in range(len(boxes)):
            t = det_track.get(di)
            if t is None:
                t = Track(self._next_id, centers[di].copy(), float(sizes[di]), boxes[di].copy(), frame_index,
                          frame_index, scores[di], had_whole=whole[di])
                self._next_id += 1
                self.tracks.append(t)
                matches.append(Match(t, boxes[di], scores[di], whole[di], True, quality[di]))
                continue
            if frame_index != t.last_frame:
                t.hits += 1
            t.misses = 0
            t.last_frame = frame_index
            t.box = boxes[di].copy()
            t.score = max(t.score, scores[di])
            # Edge boxes are cut by the border: their centre is biased, so
            # they only move a track that never had a whole box.
            if whole[di] or not t.had_whole:
                t.center = centers[di].copy()
                t.size = float(sizes[di]) if whole[di] or t.size < sizes[di] else t.size
            t.had_whole = t.had_whole or whole[di]
            if self._confirmable(t):
                t.confirmed = True
            matches.append(Match(t, boxes[di], scores[di], whole[di], False, quality[di]))

        self._merge_duplicates(origin, w, h, frame_index)
        together = [m.track for m in matches]
        for t in together:
            t.seen_with.update(o.id for o in together if o is not t)
        matched = {id(m.track) for m in matches}
        keep = []
        for t in self.tracks:
            if id(t) not in matched and t.last_frame != frame_index and self._in_view(t, origin, w, h):
                t.misses += 1
            if not t.confirmed and t.misses >= self.drop_unconfirmed_after:
                continue  # a detection that never repeated: a false positive
            if not t.counted and not t.confirmed and frame_index - t.last_frame > self.max_age:
                continue
            if t.counted and frame_index - t.last_frame > self.max_age:
                continue  # forgotten: too old to be met again reliably
            keep.append(t)
        self.tracks = keep
        return matches

    def _confirmable(self, t: Track) -> bool:
        if t.hits < self.confirm_hits:
            return False
        return t.score >= self.confirm_score or t.hits >= self.confirm_hits_weak

    def _merge_duplicates(self, origin: np.ndarray, w: int, h: int, frame_index: int) -> None:
        """Fold tracks that turned out to be the same cell into one.

        A detection can miss its track (a box cut by the border has a biased
        centre, the detector skipped frames) and start a second track on the
        same cell. Two tracks within the match gate of each other, at most one
        of them seen in this frame (two boxes seen together are two cells), are
        one cell: the counted or older one absorbs the other's hits and votes.
        """
        seen_now = [t for t in self.tracks if t.last_frame == frame_index]
        dropped: set[int] = set()
        for t in seen_now:
            if id(t) in dropped:
                continue
            for o in self.tracks:
                if o is t or id(o) in dropped or o.last_frame == frame_index:
                    continue
                if not self._in_view(o, origin, w, h, o.size):
                    continue
                if np.linalg.norm(t.center - o.center) > self.match_distance * max(t.size, o.size):
                    continue
                keep, drop = sorted((t, o), key=lambda x: (not x.counted, not x.confirmed, x.id))
                if drop.counted:
                    continue  # both already counted: nothing left to undo here
                self._absorb(keep, drop)
                dropped.add(id(drop))
                if drop is t:
                    break
        if dropped:
            self.tracks = [t for t in self.tracks if id(t) not in dropped]

    def _absorb(self, keep: Track, drop: Track) -> None:
        logger.debug("track %d merged into track %d", drop.id, keep.id)
        keep.hits += drop.hits
        keep.classified += drop.classified
        keep.votes.extend(drop.votes)
        keep.score = max(keep.score, drop.score)
        keep.had_whole = keep.had_whole or drop.had_whole
        keep.first_frame = min(keep.first_frame, drop.first_frame)
        if drop.last_frame >= keep.last_frame:
            keep.center, keep.box, keep.size, keep.last_frame = drop.center, drop.box, drop.size, drop.last_frame
            keep.misses = 0
        if drop._best_q > keep._best_q:
            keep._best_q, keep.best_crop, keep.best_attention = drop._best_q, drop.best_crop, drop.best_attention
            keep.best_box, keep.best_frame = drop.best_box, drop.best_frame
        if self._confirmable(keep):
            keep.confirmed = True

    def wants_vote(self, m: Match) -> bool:
        """Classify this detection? Only until the track has enough votes of its best quality.

        A cell entering the view is first cut by the border, then whole, then
        clean; a crop worse than one the track already had is not classified.
        """
        t = m.track
        if t.counted or t.classified >= self.max_classify:
            return False
        if m.quality < t.best_quality:
            return False
        return t.votes_at(m.quality) < self.votes_per_track

    def ready(self, frame_index: int) -> list[Track]:
        """Confirmed, not yet counted tracks that have what they need to be counted."""
        out = []
        for t in self.tracks:
            if t.counted or not t.confirmed or not t.votes:
                continue
            if t.clean_votes >= self.votes_per_track or frame_index - t.last_frame >= self.count_after_lost:
                out.append(t)
        return self._not_already_counted(out)

    def flush(self) -> list[Track]:
        """At the end of the source: every confirmed track not yet counted."""
        return self._not_already_counted([t for t in self.tracks if t.confirmed and not t.counted and t.votes])

    def _not_already_counted(self, tracks: list[Track]) -> list[Track]:
        """Last check before a cell is counted: is it a counted cell seen again?

        A box that jumps (a large cell cut by the border, a lobe boxed alone)
        can start a track beyond the match gate of the cell's counted track.
        A counted track within one cell size that was never seen in the same
        frame as this one is the same cell: this track folds into it. Two
        neighbouring cells are seen together, so they are never folded.
        """
        counted = [c for c in self.tracks if c.counted]
        out = []
        for t in tracks:
            dup = None
            for c in counted:
                if c.id in t.seen_with or t.id in c.seen_with:
                    continue
                if np.linalg.norm(t.center - c.center) <= self.dedupe_distance * max(t.size, c.size):
                    dup = c
                    break
            if dup is None:
                out.append(t)
                continue
            logger.debug("track %d is counted track %d seen again: not counted twice", t.id, dup.id)
            self._absorb(dup, t)
            self.tracks = [x for x in self.tracks if x is not t]
        return out

    def visible(self, frame_index: int) -> list[Track]:
        return [t for t in self.tracks if t.last_frame == frame_index]
