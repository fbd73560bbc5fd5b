"""Train the leukocyte classifier or detector from the real data (one command).

    python -m scripts.training.data                      # once: index + cache ../shared/datasets
    python -m scripts.training.kiosk_framing             # once: the kiosk's square around each single-cell photo's cell
    python -m scripts.training.train classifier --out runs/cls --teacher models/training/teacher_probs.npz
    python -m scripts.training.train detector   --out runs/det
    python -m scripts.training.train classifier --exclude-source chula --out runs/loso_chula   # leave-one-source-out

Seeded, with a progress bar and a log file (``<out>/train.log``). Every
input goes through ``scripts.training.augment`` (raw pixels) and then the runtime's own
``edge_app.imaging.preprocess`` before the network, so training sees what the kiosk
sees. Model selection uses the *val* splits only; test splits are never read.
Half of the single-cell photos (PBC, Raabin) are framed as the kiosk frames a
detected cell (``--kiosk-framing``, ``scripts.training.kiosk_framing``).
``--teacher`` adds distillation from precomputed teacher probabilities
(``scripts.training.teacher_probs``), so a GPU-trained teacher costs the CPU run nothing.
Uses a CUDA GPU when present (``--device``), otherwise the CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]

from edge_app.imaging import preprocess  # noqa: E402
from edge_app.labels import CLASSES  # noqa: E402
from scripts.training import augment, data, kiosk_framing  # noqa: E402
from scripts.training.wbcnet import Classifier, Detector, to_network_input  # noqa: E402

logger = logging.getLogger("train")

# Share of each labelled source in a classifier epoch (classes balanced inside a source).
SOURCE_SHARE = {"pbc": 0.45, "raabin": 0.30, "chula": 0.125, "bccd": 0.125}
DET_SOURCE_SHARE = {"bccd": 0.3, "chula": 0.3, "txl_pbc": 0.4}
KEEP_VISIBLE = 0.4  # a cell cut by the zoom window stays a detector target while this share of its box is inside


def seed_everything(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


def _worker_rng(seed: int, index: int) -> np.random.Generator:
    # torch gives each worker a fresh seed per epoch (derived from the seeded
    # generator), so augmentation differs per epoch yet is reproducible.
    info = torch.utils.data.get_worker_info()
    wid = info.id if info else 0
    return np.random.default_rng([seed, wid, index, int(torch.initial_seed() % (2**31))])


def make_optimiser(model, args):
    """AdamW with a one-cycle schedule over the whole run (both networks)."""
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd)
    steps = args.epochs * (args.epoch_size // args.batch)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)


class WeightAverage:
    """Exponential moving average of the weights and batch-norm statistics.

    The averaged copy is what gets scored on val and saved: it smooths the
    epoch-to-epoch wobble of a small network on a few thousand crops, costs one
    lerp per step, and exports like any checkpoint (same state_dict keys)."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: int = 0):
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def step_decay(self) -> float:
        """The decay of the next update. With ``warmup`` (steps) it ramps up as
        ``decay * (1 - exp(-t / warmup))`` (YOLOv5's ModelEMA), so the random
        initial weights stop dominating the average after a few hundred steps
        instead of a few thousand; 0 keeps the constant decay (earlier runs replay)."""
        if not self.warmup:
            return self.decay
        return self.decay * (1.0 - math.exp(-self.updates / self.warmup))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = self.step_decay()
        live = model.state_dict()
        for k, v in self.model.state_dict().items():
            if v.dtype.is_floating_point:
                v.lerp_(live[k].detach(), 1.0 - decay)
            else:  # e.g. num_batches_tracked
                v.copy_(live[k])


def averaged(model, args):
    """The weight average to score and save when ``--ema`` is set, else None."""
    return WeightAverage(model, args.ema, args.ema_warmup) if args.ema else None


def take_step(model, opt, sched, ema: WeightAverage | None, loss) -> None:
    """One optimiser and LR-schedule step, then the weight average's."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    if ema:
        ema.update(model)


# -------------------------------------------------------------------- classifier
class CropSet(Dataset):
    """Labelled crops; in training each is turned, zoomed by ``scale`` and
    shifted by up to ``shift`` of its side (how far a detector's box strays
    from the annotated one), then photometrically augmented. With ``frames``
    (kiosk squares, ``scripts.training.kiosk_framing``), a single-cell photo is framed as
    the kiosk frames a detected cell with probability ``kiosk_framing``.

    ``photometric_first``: the share of crops whose stain, lamp, optics and
    sensor effects are applied to the photo *before* the kiosk's framing zooms
    it, as they happen in the field (the camera forms the image, then the kiosk
    cuts and resizes the cell). Applied after the zoom, a framed PBC photo's
    noise grain is about 1.9 times finer than the kiosk ever sees
    (scripts/research/README.md).

    ``noise_at_source``: only the sensor noise is drawn on the photo's pixels
    and warped with the crop's zoom (``augment.training_view``); everything
    else stays after the zoom, as in 1.5.0.

    ``style``: a ``StyleBank``; with probability ``style_mix`` a crop takes
    the amplitude spectrum of a random crop from a random camera in it
    (``augment.amplitude_mix``)."""

    def __init__(self, images, labels, train: bool, seed: int, strength: float = 1.0, stain_norm: bool = False,
                 scale=augment.CROP_SCALE, shift: float = augment.CROP_SHIFT, frames=None,
                 kiosk_framing: float = 0.0, photometric_first: float = 0.0, noise_at_source: bool = False,
                 style=None, style_mix: float = 0.0):
        self.images, self.labels, self.train, self.seed, self.strength = images, labels, train, seed, strength
        self.stain_norm, self.scale, self.shift = stain_norm, tuple(scale), shift
        self.frames, self.kiosk_framing = frames, kiosk_framing
        self.photometric_first, self.noise_at_source = photometric_first, noise_at_source
        self.style, self.style_mix = style, style_mix

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = self.images[i]
        if self.train:
            rng = _worker_rng(self.seed, i)
            frame = None
            # No draw when off, so runs without kiosk framing replay exactly.
            if self.kiosk_framing > 0 and np.isfinite(self.frames[i, 0]) and rng.random() < self.kiosk_framing:
                frame = kiosk_framing.augment_frame(self.frames[i])
            # No draw at 0 or 1, so 1.5.0 (0) and runs/cls_pf (1) replay exactly.
            first = self.photometric_first >= 1 or (self.photometric_first > 0
                                                    and rng.random() < self.photometric_first)
            # No draw when off, so runs without the style mix replay exactly.
            style = self.style.draw(rng) if self.style_mix > 0 and rng.random() < self.style_mix else None
            img = augment.training_view(img, rng, self.strength, self.scale, self.shift, frame, first,
                                        self.noise_at_source, style)
        x = preprocess.classifier_input(img, stain_norm=self.stain_norm)[0]
        return torch.from_numpy(x), int(self.labels[i]), i  # the index finds the crop's teacher target


class StyleBank:
    """Train-split crops of several cameras, labels ignored, for the amplitude
    mix: a draw picks a camera uniformly (so 300 Chula crops count as much as
    12,000 PBC photos), then a crop, turned by a random quarter and mirrored.
    At most ``cap`` crops per camera are kept (seeded), which bounds memory."""

    def __init__(self, images, sources, seed: int, cap: int = 2000):
        rng = np.random.default_rng(seed)
        keep = np.concatenate([rng.permutation(np.nonzero(sources == s)[0])[:cap] for s in np.unique(sources)])
        keep.sort()
        self.images, self.sources = images[keep], sources[keep]
        self.groups = [np.nonzero(self.sources == s)[0] for s in np.unique(self.sources)]

    def counts(self) -> dict:
        return {str(s): int((self.sources == s).sum()) for s in np.unique(self.sources)}

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        group = self.groups[int(rng.integers(len(self.groups)))]
        img = np.rot90(self.images[group[int(rng.integers(len(group)))]], int(rng.integers(4)))
        return np.ascontiguousarray(img[:, ::-1] if rng.random() < 0.5 else img)


def style_bank(d: dict, args) -> StyleBank | None:
    """The ``--style-mix`` bank: by default the labelled training sources and
    TXL-PBC's unlabelled crops (never the left-out source); ``--style-sources``
    names them instead, and may name the left-out source, whose train-split
    crops are then seen without labels (recorded in the checkpoint)."""
    if not args.style_mix:
        return None
    present = set(np.unique(d["sources"]))
    names = (args.style_sources.split(",") if args.style_sources
             else [s for s in (*SOURCE_SHARE, "txl_pbc") if s != args.exclude_source and s in present])
    unknown = sorted(set(names) - present)
    if unknown:
        raise SystemExit(f"--style-sources: no crops of {unknown} in the cache; choose from "
                         f"{sorted(present)}")
    m = np.isin(d["sources"], names) & (d["splits"] == "train")
    return StyleBank(d["images"][m], d["sources"][m], args.seed)


class UnlabelledSet(Dataset):
    """Crops without (or ignoring) labels: a weak and a strong view (FixMatch)."""

    def __init__(self, images, seed: int, strength: float = 1.0, stain_norm: bool = False):
        self.images, self.seed, self.strength, self.stain_norm = images, seed, strength, stain_norm

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        rng = _worker_rng(self.seed + 7, i)
        weak = augment.crop_geometry(self.images[i], rng)
        strong = augment.photometric(augment.crop_geometry(self.images[i], rng), rng, self.strength)
        return (torch.from_numpy(preprocess.classifier_input(weak, stain_norm=self.stain_norm)[0]),
                torch.from_numpy(preprocess.classifier_input(strong, stain_norm=self.stain_norm)[0]))


def _cycle(loader):
    while True:
        yield from loader


def classifier_weights(sources, strata) -> np.ndarray:
    """Each source gets its SOURCE_SHARE of an epoch; inside a source every
    stratum (a class, or for PBC one of its 8 original classes, so the three
    kinds of "other" are each seen as often as a leukocyte class) gets an equal
    part. Tiny strata are capped so a handful of crops is not repeated endlessly."""
    w = np.zeros(len(strata), np.float64)
    for src, share in SOURCE_SHARE.items():
        m = sources == src
        if not m.any():
            continue
        groups = np.unique(strata[m])
        for g in groups:
            mg = m & (strata == g)
            w[mg] = share / len(groups) / max(mg.sum(), 20)
    return w


def strata_of(sources, labels, keys) -> np.ndarray:
    """PBC: its original class folder (ig, erythroblast, platelet kept apart); else the label."""
    return np.array([k.split("/")[0] if s == "pbc" else str(lab) for s, lab, k in zip(sources, labels, keys)])


@torch.no_grad()
def predict(model, loader, device) -> np.ndarray:
    model.eval()
    out = []
    for x, *_ in loader:
        logits, _ = model(to_network_input(x.to(device)))
        out.append(torch.softmax(logits, 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(CLASSES)))


MAX_MISSING_TEACHER = 0.01


def teacher_targets(path: Path, keys: np.ndarray, left_out: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A teacher's class probabilities for these crops, in their order, and which crops have one.

    The file (``scripts.training.teacher_probs``) holds the teacher's mean softmax over the
    eight dihedral views of each clean train/val crop, keyed by crop. Offline
    targets keep the student's run as cheap as plain training on a 2-core CPU.
    A crop that joined the train split after the teacher ran (a copy pulled out
    of a held-out split, ``scripts.training.dedup``) has no target and learns from its
    label alone; more than ``MAX_MISSING_TEACHER`` of them means the file is for
    other data, and is an error."""
    with np.load(path) as z:
        index = {k: j for j, k in enumerate(z["keys"])}
        probs = z["probs"].astype(np.float32)
        trained_on = set(z["trained_on"]) if "trained_on" in z.files else None
    if len(index) != len(probs):
        raise SystemExit(f"{path}: its crop keys repeat (an older file): re-key it with "
                         "python -m scripts.training.teacher_probs --rekey")
    if left_out and (trained_on is None or left_out in trained_on):
        # A teacher that saw the left-out source would leak it into a leave-one-source-out run.
        raise SystemExit(f"{path}: its teacher trained on {left_out!r} (or does not say what it trained on), so it "
                         f"cannot teach a run that leaves {left_out!r} out; drop --teacher or give a teacher "
                         "trained with the same --exclude-source")
    have = np.array([k in index for k in keys], bool)
    missing = [k for k, h in zip(keys, have) if not h]
    if len(missing) > MAX_MISSING_TEACHER * len(keys):
        raise SystemExit(f"{path}: no teacher target for {len(missing)} of {len(keys)} training crops "
                         f"(e.g. {missing[0]}); recompute it with python -m scripts.training.teacher_probs")
    if missing:
        logger.info("teacher: %d training crops have no target and learn from their label alone (e.g. %s)",
                    len(missing), missing[0])
    out = np.zeros((len(keys), probs.shape[1]), np.float32)
    out[have] = probs[[index[k] for k in keys[have]]]
    return torch.from_numpy(out), torch.from_numpy(have)


def distillation_loss(logits, target_probs, temperature: float, reduction: str = "batchmean"):
    """Hinton et al. (2015): KL to the teacher's distribution softened by T, scaled by T^2
    (``reduction="none"``: one value per crop)."""
    soft = target_probs.clamp_min(1e-8) ** (1.0 / temperature)
    soft = soft / soft.sum(1, keepdim=True)
    kl = F.kl_div(F.log_softmax(logits / temperature, 1), soft, reduction="none").sum(1) * temperature ** 2
    return kl.mean() if reduction == "batchmean" else kl


def classifier_loss(logits, y, teacher_probs=None, has_teacher=None, kd_weight: float = 0.5,
                    kd_temp: float = 2.0):
    """Label-smoothed cross-entropy, mixed per crop with distillation where the crop has a teacher target."""
    ce = F.cross_entropy(logits, y, label_smoothing=0.1, reduction="none")
    if teacher_probs is None:
        return ce.mean()
    w = kd_weight * has_teacher.float()
    return ((1.0 - w) * ce + w * distillation_loss(logits, teacher_probs, kd_temp, reduction="none")).mean()


def train_classifier(args, device) -> dict:
    d = data.load("cls")
    labels, sources, splits = d["labels"].astype(np.int64), d["sources"], d["splits"]
    allowed = np.array([s in SOURCE_SHARE and s != args.exclude_source for s in sources])
    tr = (splits == "train") & (labels >= 0) & allowed
    logger.info("classifier train crops: %s", {s: int((tr & (sources == s)).sum()) for s in SOURCE_SHARE})
    weights = classifier_weights(sources[tr], strata_of(sources[tr], labels[tr], d["keys"][tr]))
    teacher = has_teacher = None
    if args.teacher:
        teacher, has_teacher = teacher_targets(Path(args.teacher), d["keys"][tr], args.exclude_source)
        teacher, has_teacher = teacher.to(device), has_teacher.to(device)
    frames = kiosk_framing.load(d["keys"])[tr] if args.kiosk_framing > 0 else None
    style = style_bank(d, args)
    if style:
        logger.info("style bank (amplitude mix on %.0f%% of crops): %s", 100 * args.style_mix, style.counts())
    train_set = CropSet(d["images"][tr], labels[tr], True, args.seed, args.aug, args.stain_norm,
                        args.crop_scale, args.crop_shift, frames, args.kiosk_framing, args.photometric_first,
                        args.noise_at_source, style, args.style_mix)
    sampler = WeightedRandomSampler(torch.from_numpy(weights), args.epoch_size, replacement=True,
                                    generator=torch.Generator().manual_seed(args.seed))
    loader = DataLoader(train_set, batch_size=args.batch, sampler=sampler, num_workers=args.workers,
                        drop_last=True, persistent_workers=args.workers > 0)
    val_loaders = {}
    for src in SOURCE_SHARE:
        if src == args.exclude_source:
            continue
        m = (splits == "val") & (sources == src) & (labels >= 0)
        if m.any():
            val_loaders[src] = (DataLoader(CropSet(d["images"][m], labels[m], False, 0, stain_norm=args.stain_norm),
                                           batch_size=128,
                                           num_workers=0), labels[m])
    unlabelled = None
    if args.ssl:
        # Semi-supervised: every camera's WBC crops, labels ignored, train splits only.
        um = np.isin(sources, args.ssl.split(",")) & (splits == "train")
        logger.info("semi-supervised pool: %s", {s: int((um & (sources == s)).sum()) for s in np.unique(sources[um])})
        pool = UnlabelledSet(d["images"][um], args.seed, args.aug, args.stain_norm)
        unlabelled = _cycle(DataLoader(pool, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                       drop_last=True, generator=torch.Generator().manual_seed(args.seed)))
    model = Classifier(width=args.width).to(device)
    opt, sched = make_optimiser(model, args)
    ema = averaged(model, args)
    best, history = -1.0, []
    for epoch in range(args.epochs):
        model.train()
        t0, total, n = time.time(), 0.0, 0
        for x, y, i in tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False, disable=args.quiet):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits, _ = model(to_network_input(x))
            if teacher is None:
                loss = classifier_loss(logits, y)
            else:
                i = i.to(device)
                loss = classifier_loss(logits, y, teacher[i], has_teacher[i], args.kd_weight, args.kd_temp)
            if unlabelled is not None and epoch >= 2:  # after warm-up the pseudo-labels mean something
                xw, xs = (t.to(device, non_blocking=True) for t in next(unlabelled))
                with torch.no_grad():
                    conf, pseudo = torch.softmax(model(to_network_input(xw))[0], 1).max(1)
                mask = (conf >= args.ssl_threshold).float()
                ul = F.cross_entropy(model(to_network_input(xs))[0], pseudo, reduction="none")
                loss = loss + args.ssl_weight * (ul * mask).mean()
            take_step(model, opt, sched, ema, loss)
            total += float(loss.detach()) * len(y)
            n += len(y)
        scored = ema.model if ema else model
        hits = {src: (predict(scored, ld, device).argmax(1) == y) for src, (ld, y) in val_loaders.items()}
        val = {src: float(h.mean()) for src, h in hits.items()}
        # Pooled over every val crop: a 15-crop source must not outvote 1,700.
        score = float(np.concatenate(list(hits.values())).mean()) if hits else -float(total / n)
        history.append({"epoch": epoch + 1, "loss": total / n, "val": val, "seconds": time.time() - t0})
        logger.info("epoch %d loss %.4f val %s (%.0fs)", epoch + 1, total / n,
                    {k: round(v, 3) for k, v in val.items()}, time.time() - t0)
        if score >= best:
            best = score
            torch.save({"state_dict": scored.state_dict(), "width": args.width, "epoch": epoch + 1, "val": val,
                        "bg_norm": not args.no_bg_norm, "input_size": list(preprocess.CLASSIFIER_SIZE),
                        "stain_norm": args.stain_norm, "teacher": args.teacher, "exclude_source": args.exclude_source,
                        "style_sources": sorted(style.counts()) if style else []},
                       Path(args.out) / "classifier.pt")
    return {"best_val_mean": best, "history": history}


# -------------------------------------------------------------------- detector
def _random_frame_geometry(img, boxes, rng, keep_visible: float = KEEP_VISIBLE):
    """Random flips, quarter turn and zoom window; a cell cut by the window stays a
    target while at least ``keep_visible`` of its box is inside."""
    h, w = img.shape[:2]
    if rng.random() < 0.5:
        img, boxes = img[:, ::-1], np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
    if rng.random() < 0.5:
        img, boxes = img[::-1], np.stack([boxes[:, 0], h - boxes[:, 3], boxes[:, 2], h - boxes[:, 1]], 1)
    if rng.random() < 0.3:  # 90 degree turn: the stage can sit either way
        img = np.ascontiguousarray(np.rot90(img))  # counter-clockwise
        boxes = np.stack([boxes[:, 1], w - boxes[:, 2], boxes[:, 3], w - boxes[:, 0]], 1)
        h, w = w, h
    # zoom in/out: crop a window (partial cells at the edge stay, like a real pan)
    s = rng.uniform(0.6, 1.0)
    cw, ch = int(w * s), int(h * s)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img[y0:y0 + ch, x0:x0 + cw]
    boxes = boxes - np.array([x0, y0, x0, y0], np.float32)
    return np.ascontiguousarray(img), _clip_visible(boxes, cw, ch, keep_visible)


def _clip_visible(boxes, w, h, keep_visible: float):
    """Boxes clipped to a w x h window; a cell mostly outside it is not a target."""
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, w)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, h)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    return clipped[kept > keep_visible * np.maximum(area, 1)]


MOSAIC_MIN_CELL = 24.0  # px in the detector's input: the 5th percentile of Chula's cells, the smallest camera's
MOSAIC_ZOOM = (0.33, 0.9)  # tile size as a share of the frame: up to three times smaller cells


def _shape_groups(frames, sources) -> dict:
    """Indices of the frames of each (camera, frame shape): a mosaic tiles one camera's frames only,
    and only frames of one shape, so no tile is stretched."""
    groups: dict = {}
    for i, (f, s) in enumerate(zip(frames, sources)):
        groups.setdefault((str(s), f.shape[:2]), []).append(i)
    return {k: np.asarray(v) for k, v in groups.items()}


def _zoom_out_mosaic(frames, boxes, first: int, partners: np.ndarray, rng,
                     keep_visible: float = KEEP_VISIBLE):
    """Zoom out: tile shrunken real frames of one camera over the first frame's canvas.

    The zoom window of ``_random_frame_geometry`` only ever enlarges cells, so a
    camera at low magnification (Chula's cells are a third the size of BCCD's and
    TXL-PBC's) is learnt from one source only. Tiling other frames of the same
    camera fills the canvas with real smear instead of padding. The zoom never
    takes the frame's median cell below ``MOSAIC_MIN_CELL`` detector pixels, so
    no cell is smaller than the smallest camera's. Returns ``None`` when the
    frame's cells are already that small.
    """
    img0, b0 = frames[first], boxes[first].astype(np.float32).reshape(-1, 4)
    h, w = img0.shape[:2]
    scale = min(preprocess.DETECTOR_SIZE[0] / w, preprocess.DETECTOR_SIZE[1] / h)
    lo = MOSAIC_ZOOM[0]
    if len(b0):
        side = np.median(np.maximum(b0[:, 2] - b0[:, 0], b0[:, 3] - b0[:, 1])) * scale
        lo = max(lo, MOSAIC_MIN_CELL / max(side, 1e-6))
    if lo >= MOSAIC_ZOOM[1]:
        return None
    z = rng.uniform(lo, MOSAIC_ZOOM[1])
    tw, th = max(1, round(w * z)), max(1, round(h * z))
    ox, oy = int(rng.integers(0, tw)), int(rng.integers(0, th))
    canvas = np.empty_like(img0)
    out = []
    for r in range(-(-(h + oy) // th)):
        for c in range(-(-(w + ox) // tw)):
            k = first if (r, c) == (0, 0) else int(partners[rng.integers(len(partners))])
            tile = cv2.resize(frames[k], (tw, th), interpolation=cv2.INTER_AREA)
            x0, y0 = c * tw - ox, r * th - oy
            sx0, sy0 = max(0, -x0), max(0, -y0)
            dx0, dy0 = max(0, x0), max(0, y0)
            cw, ch = min(tw - sx0, w - dx0), min(th - sy0, h - dy0)
            canvas[dy0:dy0 + ch, dx0:dx0 + cw] = tile[sy0:sy0 + ch, sx0:sx0 + cw]
            bk = boxes[k].astype(np.float32).reshape(-1, 4)
            out.append(bk * np.float32(z) + np.array([x0, y0, x0, y0], np.float32))
    return canvas, _clip_visible(np.concatenate(out), w, h, keep_visible)


def detector_targets(boxes_net: np.ndarray, grid_hw, stride, per_object: bool = False):
    """Centre heatmap, ltrb distances (in strides) and the regression mask on the network's grid.

    With ``per_object`` the mask holds 1 / (number of grid cells regressing that
    box) instead of 1, so each labelled cell weighs the same in the box loss: a
    BCCD cell (about 100 px in the input) is regressed at about nine grid
    cells, a Chula cell (about 33 px) at two to four, and with a plain mask the
    big cameras' boxes outweigh the small camera's threefold.
    """
    gh, gw = grid_hw
    heat = np.zeros((gh, gw), np.float32)
    ltrb = np.zeros((4, gh, gw), np.float32)
    mask = np.zeros((gh, gw), np.float32)
    ys, xs = np.mgrid[0:gh, 0:gw].astype(np.float32)
    cxg, cyg = (xs + 0.5) * stride, (ys + 0.5) * stride
    for x1, y1, x2, y2 in boxes_net:
        bw, bh = x2 - x1, y2 - y1
        if bw < 4 or bh < 4:
            continue
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        sigma = max(0.5, min(bw, bh) / stride / 6)
        g = np.exp(-(((xs + 0.5) - cx / stride) ** 2 + ((ys + 0.5) - cy / stride) ** 2) / (2 * sigma ** 2))
        heat = np.maximum(heat, g)
        ci, cj = min(gh - 1, max(0, int(cy // stride))), min(gw - 1, max(0, int(cx // stride)))
        heat[ci, cj] = 1.0
        # regress at cells whose centre lies inside the box's central region
        inside = (np.abs(cxg - cx) <= max(bw / 4, stride * 0.75)) & (np.abs(cyg - cy) <= max(bh / 4, stride * 0.75))
        t = np.stack([cxg - x1, cyg - y1, x2 - cxg, y2 - cyg]) / stride
        ltrb[:, inside] = t[:, inside]
        mask[inside] = 1.0 / max(1, int(inside.sum())) if per_object else 1.0
    return heat, ltrb, mask


class FrameSet(Dataset):
    def __init__(self, frames, boxes, train: bool, seed: int, strength: float = 1.0,
                 keep_visible: float = KEEP_VISIBLE, stride: int = 16, sources=None, mosaic: float = 0.0,
                 per_object: bool = False):
        self.frames, self.boxes, self.train, self.seed, self.strength = frames, boxes, train, seed, strength
        self.per_object = per_object
        self.keep_visible, self.stride, self.mosaic = keep_visible, stride, mosaic
        self.partners = None
        if mosaic > 0:
            groups = _shape_groups(frames, sources)
            self.partners = [groups[(str(s), f.shape[:2])] for f, s in zip(frames, sources)]
        w, h = preprocess.DETECTOR_SIZE
        self.grid = (-(-h // stride), -(-w // stride))  # ceil: the network's own output grid

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, i):
        img, boxes = self.frames[i], self.boxes[i].astype(np.float32).reshape(-1, 4)
        if self.train:
            rng = _worker_rng(self.seed, i)
            if self.mosaic > 0 and rng.random() < self.mosaic:
                tiled = _zoom_out_mosaic(self.frames, self.boxes, i, self.partners[i], rng, self.keep_visible)
                if tiled is not None:
                    img, boxes = tiled
            img, boxes = _random_frame_geometry(img, boxes, rng, self.keep_visible)
            img = augment.photometric(img, rng, self.strength)
        x, lb = preprocess.detector_input(img)
        b = boxes * lb.scale + np.array([lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y], np.float32)
        heat, ltrb, mask = detector_targets(b, self.grid, self.stride, self.per_object)
        return torch.from_numpy(x[0]), torch.from_numpy(heat), torch.from_numpy(ltrb), torch.from_numpy(mask)


def focal_heat_loss(logits, target):
    """CenterNet's penalty-reduced focal loss on the centre heatmap."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1 - pos
    pos_loss = torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = torch.log(1 - p) * p ** 2 * (1 - target) ** 4 * neg
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


# name -> (per-object mask weights, L1 relative to the box's side); see detector_targets and box_loss
BOX_LOSSES = {"cell": (False, False), "object": (True, True), "object_stride": (True, False)}


def box_loss(pred, target, mask, relative: bool = False):
    """GIoU-free IoU loss on ltrb distances + L1, only where a box is regressed (``mask`` weighs each grid cell).

    The L1 term is in strides, or with ``relative`` in units of the labelled
    box's mean side: a 1.4x too large box then costs a small cell as much as a
    big one (in strides it costs a Chula cell a third of what it costs BCCD's).
    """
    m = mask.unsqueeze(1)
    if mask.sum() <= 0:
        return pred.sum() * 0
    pl, pt, pr, pb = pred.unbind(1)
    tl, tt, tr, tb = target.unbind(1)
    inter = (torch.min(pl, tl) + torch.min(pr, tr)) * (torch.min(pt, tt) + torch.min(pb, tb))
    union = (pl + pr) * (pt + pb) + (tl + tr) * (tt + tb) - inter
    iou = inter / union.clamp(min=1e-6)
    l_iou = ((1 - iou) * mask).sum() / mask.sum()
    if relative:
        side = ((tl + tr + tt + tb) / 2).clamp(min=0.5).unsqueeze(1)
        l1 = (torch.abs(pred - target) / side * m).sum() / (m.sum() * 4)
    else:
        l1 = (torch.abs(pred - target) * m).sum() / (m.sum() * 4) / 4
    return l_iou + l1


@torch.no_grad()
def detector_val_ap(model, frames, boxes, device) -> dict:
    """AP at IoU 0.5 and 0.75 on val frames, decoded like the runtime (low threshold: AP ranks every peak).

    AP rather than recall at one threshold: it also rewards few confident false
    positives. AP50 saturates on the small val sets (BCCD and Chula reach 1.000
    within ten epochs), so a checkpoint chosen by AP50 alone is chosen by
    TXL-PBC's third decimal; AP75 also scores how tight the boxes are.
    """
    from edge_app.model.bundle import decode_detections
    from scripts.training.eval_metrics import ap50_ap75

    model.eval()
    dets = []
    for img in frames:
        x, lb = preprocess.detector_input(img)
        heat, ltrb = model(to_network_input(torch.from_numpy(x).to(device)))
        heat = torch.sigmoid(heat)[0, 0].cpu().numpy()
        ltrb = ltrb[0].permute(1, 2, 0).cpu().numpy()
        pred, scores = decode_detections(heat, ltrb, model.stride, 0.05, 0.4)
        dets.append((lb.to_frame(pred), scores))
    return ap50_ap75(dets, [g.reshape(-1, 4) for g in boxes])


def chula_fold(sources, splits, keys, slides) -> np.ndarray:
    """Mask of the Chula *train* frames of these slides (a study fold: kept out of training, scored each epoch).

    Chula's val split is two slides with 15 cells, too few to tell two box
    losses apart; a fold of train slides gives a bigger slide-disjoint set
    without touching test. Keys are ``<slide>_<frame>.jpg``.
    """
    slides = set(slides or ())
    if not slides:
        return np.zeros(len(sources), bool)
    slide = np.array([k.rsplit("_", 1)[0] for k in keys])
    present = set(slide[(sources == "chula") & (splits == "train")])
    if not slides <= present:
        raise SystemExit(f"--fold-slides: {sorted(slides - present)} are not Chula train slides "
                         f"(train slides: {sorted(present)})")
    return (sources == "chula") & (splits == "train") & np.isin(slide, sorted(slides))


def train_detector(args, device) -> dict:
    d = data.load("det")
    sources, splits = d["sources"], d["splits"]
    fold = chula_fold(sources, splits, d["keys"], args.fold_slides)
    tr = (splits == "train") & np.array([s != args.exclude_source for s in sources]) & ~fold
    w = np.zeros(len(sources))
    for src, share in DET_SOURCE_SHARE.items():
        m = tr & (sources == src)
        if m.any():
            w[m] = share / m.sum()
    idx = np.nonzero(tr)[0]
    train_set = FrameSet(d["frames"][idx], d["boxes"][idx], True, args.seed, args.aug, args.keep_visible,
                         args.stride, sources=sources[idx], mosaic=args.mosaic,
                         per_object=BOX_LOSSES[args.box_loss][0])
    sampler = WeightedRandomSampler(torch.from_numpy(w[idx]), args.epoch_size, replacement=True,
                                    generator=torch.Generator().manual_seed(args.seed))
    loader = DataLoader(train_set, batch_size=args.batch, sampler=sampler, num_workers=args.workers, drop_last=True,
                        persistent_workers=args.workers > 0)
    val = {src: np.nonzero((splits == "val") & (sources == src))[0] for src in DET_SOURCE_SHARE}
    model = Detector(width=args.width, stride=args.stride).to(device)
    opt, sched = make_optimiser(model, args)
    ema = averaged(model, args)
    best, history = -1.0, []
    for epoch in range(args.epochs):
        model.train()
        t0, total, n = time.time(), 0.0, 0
        for x, heat, ltrb, mask in tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False,
                                        disable=args.quiet):
            x, heat, ltrb, mask = (t.to(device, non_blocking=True) for t in (x, heat, ltrb, mask))
            ph, pb = model(to_network_input(x))
            loss = focal_heat_loss(ph[:, 0], heat) + 2.0 * box_loss(pb, ltrb, mask, BOX_LOSSES[args.box_loss][1])
            take_step(model, opt, sched, ema, loss)
            total += float(loss.detach()) * len(x)
            n += len(x)
        scored = ema.model if ema else model
        aps = {src: detector_val_ap(scored, d["frames"][ix], d["boxes"][ix], device) for src, ix in val.items()
               if len(ix) and src != args.exclude_source}
        # each camera counts the same
        score = float(np.mean([a["ap50"] if args.select_by == "ap50" else (a["ap50"] + a["ap75"]) / 2
                               for a in aps.values()]))
        if fold.any():  # measured, never part of the checkpoint choice
            aps["chula_fold"] = detector_val_ap(scored, d["frames"][fold], d["boxes"][fold], device)
        rec = {src: a["ap50"] for src, a in aps.items()}
        rec75 = {src: a["ap75"] for src, a in aps.items()}
        history.append({"epoch": epoch + 1, "loss": total / n, "val_ap50": rec, "val_ap75": rec75,
                        "seconds": time.time() - t0})
        logger.info("epoch %d loss %.4f val AP50 %s AP75 %s (%.0fs)", epoch + 1, total / n,
                    {k: round(v, 3) for k, v in rec.items()}, {k: round(v, 3) for k, v in rec75.items()},
                    time.time() - t0)
        state = {"state_dict": scored.state_dict(), "width": args.width, "stride": args.stride,
                 "epoch": epoch + 1, "val": rec, "val_ap75": rec75, "select_by": args.select_by,
                 "box_loss": args.box_loss}
        if score >= best:
            best = score
            torch.save(state, Path(args.out) / "detector.pt")
    torch.save(state, Path(args.out) / "detector_last.pt")  # for studies of the checkpoint choice
    return {"best_val_mean": best, "history": history}


# -------------------------------------------------------------------- main
def disable_background_normalisation() -> None:
    """Ablation switch: replace the background white-balance by a plain cast."""
    preprocess.normalise_background = lambda img, background=None: img.astype(np.float32)

DEFAULTS = {
    # shipped configuration: chosen by val accuracy vs 2-core CPU latency (scripts/research/README.md)
    "classifier": dict(width=0.5, epochs=40, epoch_size=12800, batch=64, lr=3e-3, ema=0.999,
                       crop_scale=augment.CROP_SCALE, crop_shift=augment.CROP_SHIFT, kiosk_framing=0.5,
                       photometric_first=0.0, noise_at_source=True),
    "detector": dict(width=0.35, epochs=24, epoch_size=1536, batch=16, lr=3e-3, ema=0.0, keep_visible=KEEP_VISIBLE,
                     stride=16, mosaic=0.0, select_by="ap50", box_loss="cell"),
}


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, with the task's shipped defaults filled in where it is silent."""
    ap = argparse.ArgumentParser(description="Train the WBC classifier or detector.")
    ap.add_argument("task", choices=("classifier", "detector"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=float)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--epoch-size", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--wd", type=float, default=5e-4)
    ap.add_argument("--ema", type=float,
                    help="score and save an exponential moving average of the weights with this decay (0 = off)")
    ap.add_argument("--ema-warmup", type=int, default=0, metavar="STEPS",
                    help="ramp the average's decay up over about this many steps (0 = constant decay)")
    ap.add_argument("--aug", type=float, default=1.0, help="photometric augmentation strength (0 = off)")
    ap.add_argument("--exclude-source", default=None, help="leave this source out of training (LOSO)")
    ap.add_argument("--ssl", default=None, help="comma-separated sources whose train crops are used unlabelled")
    ap.add_argument("--ssl-threshold", type=float, default=0.9)
    ap.add_argument("--ssl-weight", type=float, default=1.0)
    ap.add_argument("--teacher", default=None,
                    help="classifier: distil from this teacher-probability file "
                         "(python -m scripts.training.teacher_probs)")
    ap.add_argument("--kd-weight", type=float, default=0.5, help="share of the distillation term in the loss")
    ap.add_argument("--kd-temp", type=float, default=2.0, help="distillation temperature")
    ap.add_argument("--no-bg-norm", action="store_true",
                    help="ablation only: skip the background white-balance (the shipped runtime always applies it)")
    ap.add_argument("--stain-norm", action="store_true",
                    help="classifier: reference each crop's stain density "
                         "(edge_app.imaging.preprocess.normalise_stain)")
    ap.add_argument("--crop-scale", type=float, nargs=2, metavar=("LO", "HI"),
                    help="classifier: random zoom range of the training crops")
    ap.add_argument("--crop-shift", type=float,
                    help="classifier: random shift of the training crops, as a fraction of their side")
    ap.add_argument("--kiosk-framing", type=float,
                    help="classifier: share of single-cell photos framed as the kiosk frames a detected cell "
                         "(needs python -m scripts.training.kiosk_framing; 0 = photos as stored)")
    ap.add_argument("--photometric-first", type=float, nargs="?", const=1.0, metavar="SHARE",
                    help="classifier: share of crops (no value: all) whose stain/camera/optics/sensor augmentation "
                         "comes before the crop's zoom, as a camera forms the image before the kiosk cuts it")
    ap.add_argument("--noise-at-source", action=argparse.BooleanOptionalAction,
                    help="classifier: draw the sensor noise on the photo's pixels and zoom it with the crop "
                         "(the camera's grain; the default since 1.6.0); --no-noise-at-source draws it on the "
                         "crop after the zoom, as every run before 1.6.0 did")
    ap.add_argument("--style-mix", type=float, default=0.0, metavar="SHARE",
                    help="share of classifier crops given another camera's amplitude spectrum (0 = off)")
    ap.add_argument("--style-sources", default=None,
                    help="comma-separated sources of the style bank's train crops, labels ignored "
                         "(default: the training sources and txl_pbc, without --exclude-source)")
    ap.add_argument("--keep-visible", type=float,
                    help="detector: a cell cut by the zoom window stays a target while this share of its box is inside")
    ap.add_argument("--stride", type=int, choices=Detector.STRIDES,
                    help="detector: output grid stride in input pixels (16: shipped; 8: tried, not adopted)")
    ap.add_argument("--mosaic", type=float, metavar="SHARE",
                    help="detector: share of training frames zoomed out by tiling shrunken frames of the same "
                         "camera (0: shipped; tried, not adopted)")
    ap.add_argument("--select-by", choices=("ap50", "ap50_75"),
                    help="detector: the val figure that picks the checkpoint, per camera then averaged "
                         "(ap50: shipped; ap50_75: the mean of AP50 and AP75, tried, not adopted)")
    ap.add_argument("--box-loss", choices=tuple(BOX_LOSSES),
                    help="detector: 'cell' weighs every regressed grid cell the same, L1 in strides (shipped); "
                         "'object' weighs every labelled cell the same, L1 relative to its box; "
                         "'object_stride' weighs every labelled cell the same, L1 in strides")
    ap.add_argument("--fold-slides", type=lambda v: [x for x in v.split(",") if x], default=None,
                    metavar="SLIDE,...",
                    help="detector study: keep these Chula train slides out of training and score them each "
                         "epoch as 'chula_fold' (not part of the checkpoint choice)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    for k, v in DEFAULTS[args.task].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.FileHandler(out / "train.log"), logging.StreamHandler()])
    if args.threads:
        torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    seed_everything(args.seed)
    if args.no_bg_norm:
        disable_background_normalisation()
    device = torch.device(args.device)
    logger.info("training %s on %s with %s", args.task, device, vars(args))
    t0 = time.time()
    result = (train_classifier if args.task == "classifier" else train_detector)(args, device)
    result.update(config=vars(args), seconds=time.time() - t0, torch=torch.__version__, device=str(device))
    (out / f"{args.task}_train.json").write_text(json.dumps(result, indent=1))
    logger.info("done in %.1f min; best val mean %.4f", (time.time() - t0) / 60, result["best_val_mean"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
