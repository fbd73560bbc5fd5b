"""One engine file: ``selftest --build-engine``, ``run`` and ``bench`` agree on it whatever mix of
``--data-dir`` and ``$WBC_DATA_DIR`` names the data dir (``edge_app.paths``).

The verbs run in-process through ``edge_app.cli.main`` on the TensorRT/pycuda fakes
(``tests/trt_fakes.py``) with tiny ONNX models calibrated on the shipped ``calibration/``
images; the counter and the bench read one shipped calibration frame as an image folder.
The self-test builds each engine once; every later verb must load that file, build nothing,
and write no engine anywhere else (not under ``$WBC_DATA_DIR`` when ``--data-dir`` is given,
not under ``$HOME``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from edge_app import cli
from edge_app.backends import engine_cache
from edge_app.commands.run import EXIT_NOT_FINAL
from tests import trt_fakes

REPO = Path(__file__).resolve().parents[2]
CALIB = json.loads((REPO / "calibration" / "manifest.json").read_text())


def _calibration(kind: str, n: int) -> list[Path]:
    return [REPO / "calibration" / e["file"] for e in CALIB[kind][:n]]


@pytest.fixture
def kiosk(tmp_path, monkeypatch):
    model_dir = trt_fakes.write_tiny_bundle(tmp_path, _calibration("crops", 8), _calibration("frames", 8))
    trt_fakes.write_reference(model_dir, _calibration("crops", 4), _calibration("frames", 2))
    slide = tmp_path / "slide"  # what the counter and the bench look at
    slide.mkdir()
    for p in _calibration("frames", 1):
        shutil.copy(p, slide / p.name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv("WBC_DATA_DIR", raising=False)
    return {"tmp": tmp_path, "model_dir": model_dir, "slide": slide, "home": home,
            "x": tmp_path / "x", "y": tmp_path / "y"}


def _config(k, engine_dir: Path | None) -> str:
    path = k["tmp"] / "kiosk.toml"
    text = f'[model]\ndir = "{k["model_dir"]}"\n[inference]\nbackend = "tensorrt"\nprecision = "int8"\n'
    if engine_dir is not None:
        text += f'engine_dir = "{engine_dir}"\n'
    path.write_text(text)
    return str(path)


def _engines(folder: Path) -> dict[str, str]:
    return {p.name: engine_cache.sha256_file(p) for p in sorted(folder.glob("*.engine"))}


def _builds(fake) -> int:
    return sum(1 for c in fake.calls if c[0] == "Builder.build_serialized_network")


def _verb(monkeypatch, caplog, env: Path | None, argv: list[str]) -> set[str]:
    """Run one verb with ``$WBC_DATA_DIR`` set to ``env`` (unset: None); the engine files it loaded.

    ``run`` on one frame of a tiny untrained model counts no cell: it ends "not final" (exit 3), which
    is an outcome of the count, not of the engine it loaded."""
    if env is None:
        monkeypatch.delenv("WBC_DATA_DIR", raising=False)
    else:
        monkeypatch.setenv("WBC_DATA_DIR", str(env))
    caplog.clear()
    rc = cli.main(argv)
    assert rc == 0 or (argv[0] == "run" and rc == EXIT_NOT_FINAL), (argv, rc, caplog.text)
    return {r.getMessage().rsplit(" ", 1)[1] for r in caplog.records
            if r.name == "edge_app.backends.tensorrt" and ": TensorRT engine " in r.getMessage()}


@pytest.mark.slow
@pytest.mark.parametrize("configured", [False, True], ids=["data-dir-engines", "config-engine-dir"])
def test_selftest_run_and_bench_use_the_same_engine(monkeypatch, caplog, kiosk, configured):
    caplog.set_level(logging.INFO, logger="edge_app.backends.tensorrt")
    fake, _ = trt_fakes.install(monkeypatch)
    x, y = kiosk["x"], kiosk["y"]
    engine_dir = kiosk["tmp"] / "engines-by-config" if configured else x / "engines"
    config = _config(kiosk, engine_dir if configured else None)
    slide = str(kiosk["slide"])

    # The self-test is told X by flag while $WBC_DATA_DIR names another folder: the flag wins.
    built = _verb(monkeypatch, caplog, y, ["selftest", "--build-engine", "--no-camera", "--config", config,
                                            "--data-dir", str(x)])
    engines = _engines(engine_dir)
    assert len(engines) == 2 and set(engines) == built  # detector and classifier, one file each
    assert _builds(fake) == 2

    run = ["run", "--source", slide, "--headless", "--target", "1", "--config", config]
    bench = ["bench", "--source", slide, "--frames", "1", "--config", config]
    for env, argv in ((None, run + ["--data-dir", str(x)]),      # flag only
                      (x, run),                                  # $WBC_DATA_DIR only
                      (y, run + ["--data-dir", str(x)]),         # both, different: the flag wins
                      (y, bench + ["--data-dir", str(x)]),
                      (x, bench)):
        loaded = _verb(monkeypatch, caplog, env, argv)
        assert loaded == set(engines), (argv, env)

    assert _builds(fake) == 2  # nothing was built after the self-test
    assert _engines(engine_dir) == engines  # the same files, untouched
    assert not (y / "engines").exists() and not list(y.glob("**/*.engine"))
    assert not list(kiosk["home"].glob("**/*.engine"))
    if configured:
        assert not (x / "engines").exists()
