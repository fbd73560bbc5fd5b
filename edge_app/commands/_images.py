"""Shared by ``classify`` and ``detect``: load the bundle, walk the files,
report bad files per file on stderr and exit non-zero at the end."""

from __future__ import annotations

import json
import logging
import sys

from edge_app.config import load_config
from edge_app.imaging import preprocess

logger = logging.getLogger(__name__)


def add_image_args(p) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="one JSON object per line (the scripting contract)")
    p.add_argument("--precision", choices=("auto", "fp32", "int8"), default=None,
                   help="model precision (default auto: the faster of int8 and fp32 on this CPU, both checked)")
    p.add_argument("--backend", choices=("auto", "tensorrt", "tflite"), default=None)
    p.add_argument("--model-dir", default=None, help="folder with manifest.json (default: shipped models/)")
    p.add_argument("--site", default=None, metavar="DIR",
                   help="a site profile folder (wbc-counter adapt): mix its head into the classifier "
                        "(default: [model] site, else none)")


def load_bundle(args):
    from edge_app.model.bundle import ModelBundle

    cfg = load_config(args.config, {"inference.backend": args.backend, "inference.precision": args.precision,
                                    "model.dir": args.model_dir, "model.site": args.site})
    return ModelBundle.from_config(cfg, args.data_dir)


def for_each_image(paths, handle) -> int:
    """Call ``handle(path, rgb) -> dict`` per readable image; print JSON lines."""
    failed = 0
    for path in paths:
        try:
            rgb = preprocess.read_rgb(path)
        except FileNotFoundError:
            print(f"{path}: error: no such file", file=sys.stderr)
            failed += 1
            continue
        except MemoryError:  # one image too large for this machine must not end the batch
            print(f"{path}: error: not enough memory to decode it (use a smaller image)", file=sys.stderr)
            failed += 1
            continue
        except IsADirectoryError:
            print(f"{path}: error: is a directory, not an image", file=sys.stderr)
            failed += 1
            continue
        except (ValueError, OSError) as exc:  # a corrupt file, or one above the decode-size cap
            print(f"{path}: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(json.dumps(handle(path, rgb)), flush=True)
    if failed:
        print(f"{failed} of {len(paths)} file(s) could not be read", file=sys.stderr)
    return 1 if failed else 0
