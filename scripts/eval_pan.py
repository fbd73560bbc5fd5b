"""Score a ``wbc-counter run --summary-json`` against a slide-pan video's ground truth.

    python -m scripts.training.make_sample_video --split test --out /tmp/heldout.mp4
    wbc-counter run --source /tmp/heldout.mp4 --headless --target 1000 --summary-json /tmp/s.json
    python -m scripts.eval_pan --truth /tmp/heldout.json --summary /tmp/s.json

Criteria (issue 3): the unique leukocyte count within +-5% of the truth, and
each true five-part percentage inside the run's 95% CI. The unique count is
``total`` (five-part cells); ``other`` is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

logger = logging.getLogger(__name__)

FIVE_PART = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")


def score(truth: dict, summary: dict) -> dict:
    n_true = truth["unique_wbc"]
    count_err = (summary["total"] - n_true) / n_true if n_true else 0.0
    inside = {k: summary["ci95"][k][0] - 1e-9 <= truth["percent"][k] <= summary["ci95"][k][1] + 1e-9
              for k in FIVE_PART}
    return {"true_unique": n_true, "counted_total": summary["total"], "counted_other": summary["other"],
            "count_error_pct": round(100 * count_err, 2), "count_ok": abs(count_err) <= 0.05,
            "percent_true": truth["percent"], "percent_run": summary["percent"], "ci95_run": summary["ci95"],
            "percent_inside_ci": inside, "percent_ok": all(inside.values())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--truth", required=True)
    p.add_argument("--summary", required=True)
    args = p.parse_args(argv)
    with open(args.truth, encoding="utf-8") as f:
        truth = json.load(f)
    with open(args.summary, encoding="utf-8") as f:
        summary = json.load(f)
    result = score(truth, summary)
    print(json.dumps(result))
    return 0 if result["count_ok"] and result["percent_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
