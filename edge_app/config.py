"""Strict configuration: defaults, a TOML/YAML file, validation that names the key.

Every section is a pydantic model with ``extra="forbid"`` (as Frigate does), so
a typo such as ``[capture] fsp = 30`` is an error naming ``capture.fsp``
instead of a silently ignored line. ``config.example.toml`` at the repository
root lists every key with its default.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message says why."""


class _Strict(BaseModel):
    # allow_inf_nan=False: inf and nan are refused by name for every number (a WBC count of inf,
    # a threshold of nan would otherwise pass the range checks and break far from the config).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Strict):
    # Folder holding manifest.json and the model files; None = the shipped models/.
    dir: Optional[str] = None
    # Crops whose top probability is below this are flagged for review.
    review_threshold: float = Field(0.6, ge=0.0, le=1.0)
    # Detections below this score are ignored. Set here, it wins over the threshold a site profile fitted
    # on its frames; left out, the profile's (if any) applies, else 0.35.
    detect_threshold: float = Field(0.35, ge=0.0, le=1.0)
    # Rotations/mirrors averaged per crop (1, 2, 4 or 8); None = the value the
    # model was validated with (manifest). Fewer views = less CPU per cell.
    tta_views: Optional[Literal[1, 2, 4, 8]] = None
    # Also run the detector on the mirrored frame and average (None = the
    # manifest's tta_flip). false halves the detector's cost per frame.
    detector_flip: Optional[bool] = None
    # The live loop (run, bench) votes each cell over several frames and needs less per frame than one
    # image does: its own mirrored pass and crop views (None = as detector_flip / tta_views above).
    # Measured on slide pans: scripts/research/README.md, "Live loop: what pays".
    live_detector_flip: Optional[bool] = False
    live_tta_views: Optional[Literal[1, 2, 4, 8]] = None
    # Per-camera box calibration: detected boxes are scaled about their centres by this before
    # tracking, cropping and display. 1.0 = as the network regresses them; a camera whose cells
    # come out boxed too large gets the factor `python -m scripts.training.box_fit` suggests from that
    # camera's labelled training frames (see models/MODEL_CARD.md).
    box_scale: float = Field(1.0, ge=0.5, le=1.5)
    # Per-camera, after box_scale: tighten each box to the stained cell inside it (edge_app.imaging.boxrefine).
    # Off by default; `python -m scripts.training.box_fit --labels` says whether a camera's frames gain from it.
    box_refine: bool = False
    # A site profile folder (`wbc-counter adapt --out DIR`): a head fitted on this site's verified cells, mixed
    # into the classifier. None = the network alone. `wbc-counter adapt --revert --config FILE` removes it.
    site: Optional[str] = None


class InferenceConfig(_Strict):
    backend: Literal["auto", "tensorrt", "tflite"] = "auto"
    # "auto": on a CPU the faster of INT8 and FP32 TFLite on this machine, both checked against the reference
    # outputs first (measured once per CPU and model, cached in the data dir); on TensorRT int8.
    precision: Literal["auto", "int8", "fp32", "fp16"] = "auto"
    threads: int = Field(2, ge=1, le=64)
    # Flat field, quality gate, stage motion and the detector's input of each frame are made on the capture
    # thread, beside its decoding, so they overlap the networks of the frame before (every frame in order).
    overlap_analysis: bool = True
    # Where TensorRT engines and calibration caches are kept (None = <data-dir>/engines).
    engine_dir: Optional[str] = None


class CaptureConfig(_Strict):
    width: int = Field(640, ge=64, le=4096)
    height: int = Field(480, ge=48, le=4096)
    fps: int = Field(30, ge=1, le=240)
    # Seconds between reopen attempts of a lost camera grow up to this cap.
    reopen_max_backoff_s: float = Field(10.0, gt=0)
    # A camera missing when the counter starts is waited for (the screen says so) instead
    # of ending the run: what a kiosk booted before its USB microscope was plugged in needs.
    wait_for_camera: bool = False
    # Optional blank-field capture (flat-field + white reference) for this device.
    flat_field: Optional[str] = None
    # The camera's magnification against the detector's training frames: "auto" measures it from the
    # red cells of the first frames (edge_app.imaging.scale; `detect`: of each image), a number fixes it
    # (4.0 = a camera with a quarter of the pixels per micron; frames are enlarged 4x and tiled).
    # Within 15% of 1, frames are used as they are.
    pixel_scale: Union[Literal["auto"], float] = "auto"

    @field_validator("pixel_scale")
    @classmethod
    def _pixel_scale_range(cls, v):
        if v != "auto" and not 0.25 <= float(v) <= 8.0:
            raise ValueError('must be "auto" or a number from 0.25 to 8')
        return v


class QualityConfig(_Strict):
    # Variance of the Laplacian (grey frame at 320 px wide) below this = out of
    # focus; counting pauses. Sharp BCCD/Chula fields measure 17-67.
    min_focus: float = Field(5.0, ge=0)
    # A frame below this fraction of the recent sharp frames' median focus is a focus slip.
    relative_focus: float = Field(0.35, ge=0.0, le=1.0)
    # After this many paused frames in a row the recent-sharpness memory is reset
    # (the stage moved to an area that is simply softer).
    relative_reset_frames: int = Field(60, ge=1)
    # Fraction of burnt-white or crushed-black pixels above which a frame is badly exposed.
    max_clipped: float = Field(0.25, ge=0.0, le=1.0)
    # Mean grey level outside [min, max] = badly exposed.
    min_brightness: float = Field(40.0, ge=0, le=255)
    max_brightness: float = Field(250.0, ge=0, le=255)

    @model_validator(mode="after")
    def _ordered(self):
        # min at or above max would pause every frame: a whole run would count nothing.
        if self.min_brightness >= self.max_brightness:
            raise ValueError(f"min_brightness ({self.min_brightness:g}) must be below max_brightness "
                             f"({self.max_brightness:g})")
        return self


class TrackingConfig(_Strict):
    # A track is confirmed (and its cell counted) after this many hits.
    confirm_hits: int = Field(3, ge=1)
    # Max distance (slide px, relative to box size) to match a detection to a track.
    match_distance: float = Field(0.6, gt=0)
    # Frames a lost track is remembered (for back-tracking) in slide coordinates.
    max_age_frames: int = Field(3600, ge=1)
    # Hysteresis: detections above [model] detect_threshold keep tracks alive, but a
    # track is only confirmed once one of its detections scored at least this...
    confirm_score: float = Field(0.6, ge=0.0, le=1.0)
    # ... or once it has been detected in this many frames (a weak but persistent cell).
    confirm_hits_weak: int = Field(10, ge=1)
    # Classifier votes (square crops fully inside the frame) averaged per cell; a track
    # is classified only until it has them, which keeps the hot path cheap.
    votes_per_track: int = Field(3, ge=1, le=20)
    # Hard cap on classifier runs per track (edge crops included).
    max_classify_per_track: int = Field(10, ge=1, le=50)
    # A confirmed track not seen for this many frames is counted with the votes it has.
    count_after_lost_frames: int = Field(8, ge=1)
    # A track about to be counted within this many cell sizes of a counted track it was
    # never seen together with is that cell seen again (a jumped box), not a new cell.
    dedupe_distance: float = Field(1.5, ge=0.0)
    # An unconfirmed track missed this many frames in a row is dropped (a false positive).
    drop_unconfirmed_after: int = Field(6, ge=1)
    # Analysis width (px) of the phase-correlation stage-motion estimate: 256 keeps the slide pans' counts of
    # 320 at 0.14 px median error against the true path (scripts/research/README.md, "Live loop: what pays").
    motion_width: int = Field(256, ge=64, le=1024)


class TallyConfig(_Strict):
    target: int = Field(100, ge=1, le=10000)
    ci_method: Literal["wilson", "clopper-pearson"] = "wilson"
    # Optional WBC count (x10^9/L) for absolute counts.
    wbc_count: Optional[float] = Field(None, gt=0)


class DisplayConfig(_Strict):
    output: Literal["auto", "opencv", "jetson", "headless"] = "auto"
    width: int = Field(1280, ge=320)
    height: int = Field(720, ge=240)


class StoreConfig(_Strict):
    # Size of the JPEG crop kept per counted cell (pixels, square).
    crop_size: int = Field(96, ge=16, le=512)
    jpeg_quality: int = Field(85, ge=10, le=100)
    min_free_mb: int = Field(200, ge=0)


class FhirConfig(_Strict):
    url: Optional[str] = None
    token_file: Optional[str] = None
    verify_tls: bool = True
    # Seconds per HTTP request; bounded (a socket cannot wait "inf" and a sync unit runs at most 10 min).
    timeout_s: float = Field(10.0, gt=0, le=600)
    identifier_system: str = "urn:wbc-counter:result"
    attach_gallery: bool = False


class LisConfig(_Strict):
    port: Optional[str] = None
    baudrate: int = Field(9600, gt=0)
    hl7: Optional[str] = None
    timeout_s: float = Field(15.0, gt=0, le=600)  # bounded like [fhir] timeout_s
    retries: int = Field(6, ge=0)


class SyncConfig(_Strict):
    # Bounded: a retry time must stay a date (a week at most between attempts).
    max_backoff_s: float = Field(3600.0, gt=0, le=7 * 86400)
    base_backoff_s: float = Field(5.0, gt=0, le=86400)


class DeliveryConfig(_Strict):
    # Only results a named person signed off (review page, kiosk review or 'wbc-counter sign')
    # are sent by sync and lis send; unsigned ones wait, and the commands say so.
    require_signoff: bool = True


class KioskConfig(_Strict):
    device_id: str = "wbc-kiosk"
    operator: str = "technician"
    watchdog: bool = True


class Config(_Strict):
    model: ModelConfig = ModelConfig()
    inference: InferenceConfig = InferenceConfig()
    capture: CaptureConfig = CaptureConfig()
    quality: QualityConfig = QualityConfig()
    tracking: TrackingConfig = TrackingConfig()
    tally: TallyConfig = TallyConfig()
    display: DisplayConfig = DisplayConfig()
    store: StoreConfig = StoreConfig()
    fhir: FhirConfig = FhirConfig()
    lis: LisConfig = LisConfig()
    sync: SyncConfig = SyncConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    kiosk: KioskConfig = KioskConfig()


def _read_file(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); "
                          "save it as UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml  # optional: only needed for YAML configs
        except ImportError as exc:
            raise ConfigError(f"{path}: YAML config needs PyYAML (pip install pyyaml) or use TOML") from exc
        try:
            _refuse_yaml_aliases(yaml, text, path)
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    else:
        try:
            import tomllib
        except ImportError:  # Python < 3.11 (JetPack 5/6 images)
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a table of sections")
    return data


def _refuse_yaml_aliases(yaml, text: str, path: Path) -> None:
    """Refuse anchors and aliases from the event stream, before anything is built: a few aliases
    nested ("billion laughs") expand to gigabytes when constructed. A config never needs them."""
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            mark = event.start_mark
            raise ConfigError(f"{path}: line {mark.line + 1}: YAML anchors and aliases (&name, *name) are not "
                              "accepted in a config; write each value out")


def _describe(exc: ValidationError, source: str, given: frozenset = frozenset()) -> str:
    """One line per error; ``given``: the dotted keys set on the command line (said so, not the file)."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        where = "command line" if key in given else source
        if err["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key '{key}' (check spelling; see config.example.toml)")
        elif err["type"] == "value_error":  # a rule across keys: its message names them
            msg = err["msg"]
            msg = msg[len("Value error, "):] if msg.startswith("Value error, ") else msg
            lines.append(f"{where}: bad values in '{key}': {msg}")
        else:
            lines.append(f"{where}: bad value for '{key}': {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Defaults, then the file (if any), then command-line overrides."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p} (pass --config with an existing TOML/YAML file)")
        data = _read_file(p)
        source = str(p)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        table = data.setdefault(section, {})
        if not isinstance(table, dict):  # e.g. "tally = 5" in the file
            raise ConfigError(f"{source}: '{section}' must be a section ([{section}] with keys), "
                              f"got {type(table).__name__}")
        table[key] = value
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        given = frozenset(k for k, v in (overrides or {}).items() if v is not None)
        raise ConfigError(_describe(exc, source, given)) from None
