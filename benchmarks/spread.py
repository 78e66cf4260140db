"""The median and spread of several runs' figures, printed and ready for JSON."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence


def summarize(runs: Sequence[Mapping[str, float | int]], digits: int = 1) -> dict[str, object]:
    """{figure: {median, min, max}} over `runs`, each figure printed on a line."""
    summary: dict[str, object] = {}
    for figure in runs[0]:
        values = [float(run[figure]) for run in runs]
        median = statistics.median(values)
        summary[figure] = {"median": median, "min": min(values), "max": max(values)}
        print(
            f"{figure:>18}: median {median:9.{digits}f}"
            f"  (min {min(values):.{digits}f}, max {max(values):.{digits}f})"
        )
    return summary
