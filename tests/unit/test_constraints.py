"""The install lock: requirements/constraints.txt pins every requirement of setup.py, and this venv holds its pins.

``./scripts/test.sh`` installs with the lock, so a failure here means the lock is stale (a
requirement was added to ``setup.py`` without refreshing it, requirements/README.md) or the
venv was changed by hand after the lock was installed.
"""

from __future__ import annotations

import ast
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "constraints.txt"


def _setup_requirements() -> dict[str, list[Requirement]]:
    """install_requires and every extra, read from setup.py's literal lists (without running it)."""
    call = next(n for n in ast.walk(ast.parse((ROOT / "setup.py").read_text()))
                if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}
    out = {"install": [Requirement(r) for r in kw["install_requires"]]}
    out.update({name: [Requirement(r) for r in reqs] for name, reqs in kw["extras_require"].items()})
    return out


def _lock() -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in LOCK.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def _here(req: Requirement, extra: str = "") -> bool:
    return req.marker is None or req.marker.evaluate({"extra": extra})


def test_every_pin_is_exact_and_torch_is_not_locked():
    lock = _lock()
    assert len(lock) >= 20
    for req in lock:
        (spec,) = req.specifier
        assert spec.operator == "==", req
    names = {canonicalize_name(r.name) for r in lock}
    assert "torch" not in names  # the training extra never reaches a kiosk
    assert {"ai-edge-litert", "tflite-runtime", "numpy", "onnxruntime", "pytest"} <= names


def test_setup_requirements_are_pinned_for_this_machine():
    pinned = {canonicalize_name(r.name): r for r in _lock() if _here(r)}
    reqs = _setup_requirements()
    for group in ("install", "test"):
        for req in reqs[group]:
            if not _here(req, "" if group == "install" else "test"):
                continue
            name = canonicalize_name(req.name)
            assert name in pinned, f"{req} ({group}) has no pin in {LOCK.name}: refresh it (requirements/README.md)"
            version = next(iter(pinned[name].specifier)).version
            assert req.specifier.contains(version, prereleases=True), f"pin {pinned[name]} is outside setup.py's {req}"


def test_both_architectures_get_a_tflite_runtime():
    """x86_64 runs ai-edge-litert, aarch64 (JetPack) tflite-runtime with NumPy 1.x, which it is built against."""
    for machine, runtime in (("x86_64", "ai-edge-litert"), ("aarch64", "tflite-runtime")):
        env = {"platform_machine": machine, "python_version": "3.10", "python_full_version": "3.10.12",
               "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "extra": ""}
        pins = {canonicalize_name(r.name): next(iter(r.specifier)).version
                for r in _lock() if r.marker is None or r.marker.evaluate(env)}
        assert runtime in pins
        if machine == "aarch64":
            assert pins["numpy"].startswith("1.")


def test_this_venv_holds_the_pinned_versions():
    wrong = []
    for req in _lock():
        if not _here(req):
            continue
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            continue  # pinned for an extra this venv does not install
        want = next(iter(req.specifier)).version
        if have != want:
            wrong.append(f"{req.name} {have} (lock: {want})")
    assert not wrong, ("this venv differs from requirements/constraints.txt: " + ", ".join(wrong)
                       + "; run ./scripts/test.sh, which installs the lock")
