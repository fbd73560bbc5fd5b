"""A site profile: a versioned folder with the head fitted on one site's verified cells.

    DIR/profile.json   what it is (below); its sha256 is the profile's identity
    DIR/head.npz       the head's arrays (``edge_app.site.head.SiteHead.arrays``)

``profile.json`` records the profile's name, the model (name, version and the
classifier ONNX's sha256) it was fitted for, the sha256 of its inputs (the CSV
and every image it names, or the store's cells), the cells per class and who
verified them, the held-back figure (the network and the profile on verified
cells kept out of the fit) and the head's method, settings and file sha256.
Fitted on whole frames, it also records ``detector``: the pixel scale measured
from them and the score threshold fitted on them, with its own held-back
figure (``edge_app.site.detection``).

``load`` refuses a profile for another model version, one whose head file does
not match its record, and one without an embedding to read: each with a
message that says what to do. A profile that was worse than the network on its
held-back cells is never written (``edge_app.commands.adapt``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_app.backends import BackendError
from edge_app.model.bundle import sha256_file
from edge_app.site import head as site_head

logger = logging.getLogger(__name__)

FORMAT = 1
PROFILE_FILE = "profile.json"
HEAD_FILE = "head.npz"


class SiteError(BackendError):
    """A site profile cannot be used; the message says what to do."""


@dataclass
class SiteProfile:
    dir: Path
    data: dict
    sha256: str  # of profile.json
    head: site_head.SiteHead

    @property
    def name(self) -> str:
        return str(self.data.get("name", self.dir.name))

    @property
    def pixel_scale(self) -> float | None:
        """The camera's scale measured from the profile's frames (a factor for the detector), or None:
        a profile fitted on crops alone, or one whose frames showed too few red cells to trust."""
        est = self.data.get("detector", {}).get("pixel_scale") or {}
        return float(est["factor"]) if est.get("confidence", 0) > 0 and est.get("factor") else None

    @property
    def detect_threshold(self) -> float | None:
        """The detector threshold fitted on the profile's frames, or None (the configured one stays)."""
        rec = self.data.get("detector", {}).get("threshold") or {}
        return float(rec["value"]) if rec.get("fitted") else None

    def calibration(self) -> dict:
        """What a session, its report and its FHIR result record of the profile it counted with."""
        return {"site_profile": self.name, "site_profile_sha256": self.sha256,
                "site_profile_model_version": self.data["model"]["version"]}


def _read(path: Path) -> tuple[dict, str]:
    pfile = path / PROFILE_FILE
    if not pfile.is_file():
        raise SiteError(f"no site profile at {path} ({PROFILE_FILE} missing): make one with 'wbc-counter adapt', "
                        "or remove [model] site / --site to count with the network alone")
    raw = pfile.read_bytes()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SiteError(f"site profile {pfile} is not valid JSON ({exc}): "
                        "make it again with 'wbc-counter adapt'") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SiteError(f"site profile {pfile} has format {data.get('format') if isinstance(data, dict) else None}, "
                        f"this version reads format {FORMAT}: make it again with 'wbc-counter adapt'")
    import hashlib
    return data, hashlib.sha256(raw).hexdigest()


def problem(path: str | Path, manifest) -> str | None:
    """Why the profile at ``path`` cannot be used with ``manifest``'s model, or None."""
    try:
        load(path, manifest)
    except SiteError as exc:
        return str(exc)
    return None


def load(path: str | Path, manifest) -> SiteProfile:
    path = Path(path)
    data, sha = _read(path)
    model = data.get("model", {})
    if model.get("version") != manifest.version or model.get("name") != manifest.data.get("name"):
        raise SiteError(f"site profile '{data.get('name')}' was fitted for model {model.get('name')} "
                        f"{model.get('version')}, this kiosk runs {manifest.data.get('name')} {manifest.version}: "
                        "refused. Fit it again for this model ('wbc-counter adapt --from-store --out DIR') or "
                        "revert it ('wbc-counter adapt --revert')")
    if not manifest.has_embedding:
        raise SiteError(f"the model in {manifest.dir} outputs no embedding, so no site profile can be applied "
                        "(install a model release with embedding outputs)")
    hinfo = data.get("head", {})
    hpath = path / HEAD_FILE
    if not hpath.is_file():
        raise SiteError(f"site profile {path} lacks {HEAD_FILE}: copy the whole folder, or make it again")
    actual = sha256_file(hpath)
    if actual != hinfo.get("sha256"):
        raise SiteError(f"site profile {path}: {HEAD_FILE} sha256 {actual[:12]}… differs from its record "
                        f"{str(hinfo.get('sha256'))[:12]}… (damaged or replaced): make it again or revert it")
    with np.load(hpath) as z:
        arrays = {k: z[k] for k in z.files}
    h = site_head.from_arrays(arrays, str(hinfo.get("method", site_head.DEFAULT_METHOD)), str(data.get("name", "")))
    dim = sum(int(o["shape"][-1]) for o in manifest.entry("classifier")["outputs"]
              if str(o.get("name", "")).startswith("embedding_"))
    if h.weight.shape[1] != dim:
        raise SiteError(f"site profile {path} reads a {h.weight.shape[1]}-value embedding, the model gives {dim}: "
                        "fit it again for this model")
    problem = _detector_problem(data.get("detector"))
    if problem:
        raise SiteError(f"site profile {path}: {problem}: make it again with 'wbc-counter adapt' or revert it")
    return SiteProfile(path, data, sha, h)


def _detector_problem(rec) -> str | None:
    """What is wrong with a profile's ``detector`` record (pixel scale, threshold), or None."""
    import math

    if rec is None:
        return None
    if not isinstance(rec, dict):
        return "its detector record is not an object"
    scale = (rec.get("pixel_scale") or {}).get("factor", 1.0)
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or not 0.05 <= scale <= 20:
        return f"its pixel scale {scale!r} is not a factor between 0.05 and 20"
    thr = (rec.get("threshold") or {}).get("value", 0.35)
    if not isinstance(thr, (int, float)) or not math.isfinite(thr) or not 0.0 <= thr <= 1.0:
        return f"its detector threshold {thr!r} is not between 0 and 1"
    return None


def head_bytes(h: site_head.SiteHead) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **h.arrays())
    return buf.getvalue()


def write(out: str | Path, data: dict, h: site_head.SiteHead) -> str:
    """Write the profile folder atomically (a half-written profile never exists); returns profile.json's sha256."""
    import hashlib

    out = Path(out)
    blob = head_bytes(h)
    data = dict(data, format=FORMAT)
    data["head"] = dict(data.get("head", {}), file=HEAD_FILE, sha256=hashlib.sha256(blob).hexdigest(),
                        method=h.method, alpha=float(h.alpha), embedding_dim=int(h.weight.shape[1]))
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    (tmp / HEAD_FILE).write_bytes(blob)
    (tmp / PROFILE_FILE).write_text(text, encoding="utf-8")
    for f in (tmp / HEAD_FILE, tmp / PROFILE_FILE):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    old = None
    if out.exists():
        if not (out / PROFILE_FILE).is_file() and any(out.iterdir()):
            shutil.rmtree(tmp)
            raise SiteError(f"{out} exists and is not a site profile: choose another --out")
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
