"""The lesion table of the benchmark report, first in each task's section: how well each model keeps the lesions of
the test subjects that have a lesion or tumour mask. Run files written before a measure existed say "not measured"."""
from __future__ import annotations

import math

import numpy as np

# (column, metric, digits, statistic): "median" for the fraction of conspicuity kept (the target is a median),
# means otherwise.
COLUMNS = (("conspicuity synthetic / acquired", ("lesion_conspicuity", "acquired_lesion_conspicuity"), 2, "mean"),
           ("conspicuity kept (median)", ("lesion_conspicuity_kept",), 2, "median"),
           ("lesion MAE", ("lesion_mae",), 3, "mean"),
           ("detection Dice synthetic / acquired", ("lesion_detection_dice", "acquired_lesion_detection_dice"), 2,
            "mean"),
           ("lesion-wise sensitivity synthetic / acquired",
            ("lesion_detection_sensitivity", "acquired_lesion_detection_sensitivity"), 2, "mean"),
           ("BraSyn SSIM lesion / healthy", ("brasyn_ssim_lesion", "brasyn_ssim_healthy"), 3, "mean"))


def _statistic(rows: list[dict], metric: str, digits: int, statistic: str) -> str:
    values = [r[metric] for r in rows if isinstance(r.get(metric), (int, float)) and not math.isnan(r[metric])]
    if not values:
        return "not measured"
    return f"{(np.median if statistic == 'median' else np.mean)(values):.{digits}f}"


def lesion_table(results: dict[str, dict]) -> list[str]:
    """One row per model over its test subjects with a lesion mask (those with a ``lesion_mae``); empty when none
    has one."""
    if not any("lesion_mae" in row for r in results.values() for row in r["rows"]):
        return []
    lines = ["| model | lesion subjects | " + " | ".join(c[0] for c in COLUMNS) + " |",
             "|" + "---|" * (len(COLUMNS) + 2)]
    for name, r in results.items():
        rows = [row for row in r["rows"] if "lesion_mae" in row]
        cells = [" / ".join(values) if set(values) != {"not measured"} else "not measured"
                 for values in ([_statistic(rows, m, digits, statistic) for m in metrics]
                                for _, metrics, digits, statistic in COLUMNS)]
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(cells) + " |")
    return lines


LEGEND = ("Lesions first: test subjects with a lesion or tumour mask. Conspicuity: mean in the lesion over the median "
          "of the brain farther than 2 voxels from it (a constant scores 1); kept: (synthetic - 1) / (acquired - 1). "
          "Detection: brain voxels with a FLAIR z-score above the tuned threshold (docs/lesions.md), Dice against the "
          "mask and the share of lesions over 10 voxels touched, on the synthetic and on the acquired image. "
          "\"not measured\": the run files predate that measure.")
