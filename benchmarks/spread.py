"""The median and spread of several runs' figures, printed and ready for JSON."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path


def report(
    settings: Mapping[str, object],
    runs: Sequence[Mapping[str, float | int]],
    json_path: Path | None,
    digits: int = 1,
) -> dict[str, object]:
    """The benchmark's settings, each figure's median and spread (printed), and every run,
    written as JSON to `json_path` if given."""
    summary: dict[str, object] = dict(settings)
    summary.update(summarize(runs, digits))
    summary["each_run"] = list(runs)
    if json_path is not None:
        json_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


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
