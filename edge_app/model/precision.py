"""``[inference] precision = "auto"``: on a CPU, the faster of INT8 and FP32 TFLite, both checked first.

INT8 is not always the faster on a CPU: it pays where the cores have fast integer dot
products (AVX-512 VNNI, AVX-VNNI, ARM's dot product) and can lose to FP32 on a CPU with
AVX2 alone, where XNNPACK's FP32 kernels are the better ones. So the choice is measured,
not assumed: each precision runs the shipped reference images through the self-test's
agreement check (``edge_app.selftest.check_reference``), those that pass are timed on a
reference frame and crop (alternately, so a shared machine's drift falls on both), and the
faster one is used. The choice is cached in the data dir (``paths.precision_cache``) keyed
by the CPU model, its SIMD features, the thread count and the model files' sha256, so it
is measured once per machine and model (at the self-test, or at the first start), logged,
and recorded with each session. An explicit precision always wins; TensorRT keeps INT8.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path

from edge_app import cpuinfo, fsutil, paths
from edge_app.backends import BackendError, resolve_backend_name

logger = logging.getLogger(__name__)

AUTO = "auto"
CPU_CHOICES = ("int8", "fp32")
TENSORRT_DEFAULT = "int8"
ROUNDS = 15  # timed rounds per precision (each: one frame + one crop), after a warm-up


def cache_key(manifest, threads: int) -> str:
    """What the measured choice holds for: this CPU, these threads, these model files."""
    cpu = cpuinfo.cpu()
    flags = ",".join(k for k, v in sorted(cpu["simd"].items()) if v)
    shas = []
    for net in ("detector", "classifier"):
        entry = manifest.entry(net)
        for kind in ("tflite_int8", "tflite_fp32"):
            name = entry["files"].get(kind)
            shas.append(str(entry["sha256"].get(name, ""))[:16])
    return f"{cpu['model']}|{flags}|threads={threads}|" + "|".join(shas)


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached(data_dir, manifest, threads: int) -> dict | None:
    """The cached choice for this CPU and model, or None (never measured here, or for another model)."""
    entry = _read_cache(paths.precision_cache(data_dir)).get(cache_key(manifest, threads))
    return entry if isinstance(entry, dict) and entry.get("precision") in CPU_CHOICES else None


def _write_cache(data_dir, key: str, entry: dict) -> None:
    path = paths.precision_cache(data_dir)
    data = _read_cache(path)
    data[key] = entry
    try:
        fsutil.make_dirs(path.parent)
        fsutil.atomic_write(path, json.dumps(data, indent=1) + "\n", what="precision cache")  # no link followed
    except OSError as exc:  # a read-only data dir: measured again next start, never a failure
        logger.warning("precision choice not cached (%s): it is measured again at the next start", exc)


def measure(manifest, threads: int) -> dict:
    """Check and time INT8 and FP32 TFLite on the reference images; the choice with its figures."""
    from edge_app import selftest
    from edge_app.imaging import preprocess
    from edge_app.model.bundle import Classifier, create_backend

    limits = selftest.thresholds(manifest)
    ref = selftest.load_reference(manifest)
    ref_dir = manifest.dir / selftest.REFERENCE_DIR
    frame = preprocess.read_rgb(str(ref_dir / ref["detector"][0]["file"]))
    crop = preprocess.read_rgb(str(ref_dir / ref["classifier"][0]["file"]))
    x_frame = preprocess.model_input("detector", frame)
    x_crop = preprocess.model_input("classifier", crop, manifest.stain_norm)
    nets, checks = {}, {}
    try:
        for p in CPU_CHOICES:
            det = create_backend(manifest, "detector", "tflite", p, threads)
            cls = create_backend(manifest, "classifier", "tflite", p, threads)
            nets[p] = (det, cls)
            check = selftest.check_reference(manifest, Classifier.for_manifest(cls, manifest), det, limits)
            checks[p] = {"ok": check.ok, "message": check.message}
        ms: dict[str, list[float]] = {p: [] for p in CPU_CHOICES}
        for p in CPU_CHOICES:  # warm-up: first calls allocate and pack weights
            for _ in range(3):
                nets[p][0].infer(x_frame)
                nets[p][1].infer(x_crop)
        for _ in range(ROUNDS):
            for p in CPU_CHOICES:
                t0 = time.perf_counter()
                nets[p][0].infer(x_frame)
                nets[p][1].infer(x_crop)
                ms[p].append((time.perf_counter() - t0) * 1000)
    finally:
        for det, cls in nets.values():
            det.close()
            cls.close()
    median = {p: round(statistics.median(v), 3) for p, v in ms.items()}
    passing = [p for p in CPU_CHOICES if checks[p]["ok"]]
    if passing:
        choice = min(passing, key=lambda p: median[p])
    else:  # neither agrees with the reference: keep the validated default; the self-test says why
        choice = "int8"
    return {"precision": choice, "median_ms_frame_plus_crop": median, "selftest": checks,
            "cpu": cpuinfo.cpu()["model"], "threads": threads, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                         time.gmtime())}


def resolve(requested: str, backend: str, manifest, data_dir, threads: int, measure_if_missing: bool = True,
            remeasure: bool = False) -> str | None:
    """The precision to run: ``requested`` unless it is "auto"; then INT8 on TensorRT and, on a CPU, the
    cached measured choice (measured now when missing, or when ``remeasure``). None only when
    ``measure_if_missing`` is false and nothing is cached (``status`` does not measure)."""
    if requested != AUTO:
        return requested
    try:
        name = resolve_backend_name(backend)
    except BackendError:
        name = backend
    if name == "tensorrt":
        return TENSORRT_DEFAULT
    key = cache_key(manifest, threads)
    entry = None if remeasure else cached(data_dir, manifest, threads)
    if entry is not None:
        logger.info("precision auto: %s (measured on this CPU at %s: %s)", entry["precision"],
                    entry.get("measured_at"), entry.get("median_ms_frame_plus_crop"))
        return entry["precision"]
    if not measure_if_missing:
        return None
    try:
        entry = measure(manifest, threads)
    except BackendError as exc:  # the reference set is missing or a model does not load: the default, said
        logger.warning("precision auto: cannot measure (%s); using int8", exc)
        return "int8"
    _write_cache(data_dir, key, entry)
    logger.info("precision auto: %s on %s (%d threads; frame + crop median ms %s; self-test %s)",
                entry["precision"], entry["cpu"], threads, entry["median_ms_frame_plus_crop"],
                {p: c["ok"] for p, c in entry["selftest"].items()})
    return entry["precision"]
