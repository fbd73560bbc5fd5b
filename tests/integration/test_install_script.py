"""scripts/install_jetson.sh: the dry run lists every step and changes nothing; a real
install into a staging root (useradd --prefix, systemctl --root) is idempotent.

The real install needs root (useradd/chown); CI containers run as root. It uses
--venv with this test environment, so no package is downloaded.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import trt_fakes

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install_jetson.sh"
STEPS = ["platform", "user wbc", "data dir /var/lib/wbc-counter", "python environment", "python packages",
         "tensorrt + pycuda", "application /opt/wbc-counter", "model", "config /etc/wbc-counter", "systemd units",
         "daemon-reload", "enable"]


def _run(*args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _tree(root: Path) -> dict:
    # lstat: enablement links point at target paths (/etc/systemd/system/...) absent on this machine.
    return {str(p.relative_to(root)): (p.lstat().st_mode, p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in root.rglob("*")}


@pytest.fixture
def staging(tmp_path):
    """A target root with the accounts files of a fresh JetPack image (video and dialout exist)."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc" / "group").write_text("root:x:0:\ndialout:x:20:\nvideo:x:44:\n")
    (root / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc" / "gshadow").write_text("root:*::\ndialout:*::\nvideo:*::\n")
    (root / "etc" / "hostname").write_text("kiosk-7\n")
    release = trt_fakes.write_tiny_bundle(tmp_path / "release", version="2024.06.1")
    return root, release


def test_script_syntax_and_help():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], timeout=60).returncode == 0
    out = _run("--help").stdout
    assert "--dry-run" in out and "--root DIR" in out
    bad = _run("--frobnicate", check=False)
    assert bad.returncode == 2 and "unknown option --frobnicate" in bad.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_clean():
    proc = subprocess.run(["shellcheck", "-S", "warning", str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout


def test_dry_run_lists_every_step_and_changes_nothing(staging):
    root, release = staging
    before = _tree(root)
    out = _run("--dry-run", "--root", root, "--venv", sys.prefix, "--models", release).stdout
    for i, name in enumerate(STEPS, 1):
        assert f"[{i}/{len(STEPS)}] {name}" in out, out
    assert "would create system user wbc (groups video, dialout)" in out
    assert "would install model 2024.06.1" in out
    assert "would install /etc/systemd/system/wbc-counter.service" in out
    assert "would enable wbc-engine.service wbc-counter.service wbc-sync.timer" in out
    assert "dry run: " in out and " change(s) would be made" in out
    assert _tree(root) == before


def test_a_bare_environment_gets_every_runtime_package_pinned(staging, tmp_path):
    """A Jetson's fresh venv lacks the counter's packages: the install names each of them (the review
    page's web stack and onnx too) and pins them with the lock file the suite passed with."""
    root, release = staging
    bare = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    out = _run("--dry-run", "--root", root, "--venv", bare, "--models", release).stdout
    line = next(ln for ln in out.splitlines() if "would pip install" in ln)
    for req in ("numpy>=1.21", "opencv-python-headless", "pydantic", "pyserial", "onnx>=1.12", "starlette>=0.37",
                "uvicorn>=0.29", "jinja2>=3.1"):
        assert req in line, line
    assert "pinned by requirements/constraints.txt" in line


@pytest.mark.skipif(os.geteuid() != 0, reason="useradd/chown into a staging root need root (CI runs as root)")
@pytest.mark.slow
def test_install_is_idempotent(staging):
    root, release = staging
    args = ["--root", root, "--venv", sys.prefix, "--models", release, "--camera", "v4l2:///dev/video2"]
    first = _run(*args).stdout
    assert "done: 0 change(s)" not in first
    # What a kiosk needs is in place.
    assert "wbc:" in (root / "etc" / "passwd").read_text()
    groups = (root / "etc" / "group").read_text()
    assert "video:x:44:wbc" in groups and "dialout:x:20:wbc" in groups
    data = root / "var" / "lib" / "wbc-counter"
    assert oct(data.stat().st_mode & 0o777) == "0o750"
    assert os.readlink(data / "models" / "active") == "2024.06.1"
    assert (data / "models" / "2024.06.1" / "calibration" / "manifest.json").is_file()
    launcher = root / "opt" / "wbc-counter" / "bin" / "wbc-counter"
    assert os.access(launcher, os.X_OK) and f"exec {sys.prefix}/bin/python -m edge_app" in launcher.read_text()
    assert 'dir = "/var/lib/wbc-counter/models/active"' in (root / "etc" / "wbc-counter" / "config.toml").read_text()
    assert (root / "etc" / "wbc-counter" / "kiosk.env").read_text() == "WBC_SOURCE=v4l2:///dev/video2\n"
    units = root / "etc" / "systemd" / "system"
    for unit in ("wbc-counter.service", "wbc-engine.service", "wbc-sync.service", "wbc-sync.timer"):
        assert (units / unit).read_bytes() == (REPO / "systemd" / unit).read_bytes()
    assert (units / "multi-user.target.wants" / "wbc-counter.service").is_symlink()
    assert (units / "multi-user.target.wants" / "wbc-engine.service").is_symlink()
    assert (units / "timers.target.wants" / "wbc-sync.timer").is_symlink()
    # The copied application imports on its own.
    proc = subprocess.run([sys.executable, "-c", "import edge_app.cli, edge_app.selftest; print(edge_app.__file__)"],
                          env=dict(os.environ, PYTHONPATH=str(root / "opt" / "wbc-counter" / "app")),
                          cwd="/", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and str(root) in proc.stdout, proc.stderr

    snapshot = _tree(root)
    second = _run(*args).stdout
    assert "done: 0 change(s) made" in second, second
    assert _tree(root) == snapshot
    assert "0 change(s) would be made" in _run("--dry-run", *args).stdout

    # A technician's edit of config.toml survives a re-install; an updated unit is re-installed.
    config = root / "etc" / "wbc-counter" / "config.toml"
    config.write_text(config.read_text() + "\n[store]\nmin_free_mb = 500\n")
    (units / "wbc-sync.timer").write_text("# stale\n")
    third = _run(*args).stdout
    assert "install /etc/systemd/system/wbc-sync.timer" in third and "done: 1 change(s) made" in third
    assert "min_free_mb = 500" in config.read_text()
