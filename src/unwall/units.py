"""Rates and durations as a person reads them (status lines, stats lines)."""

from __future__ import annotations


def human_rate(rate: float) -> str:
    """Bytes a second, as a person reads it: 0 B/s, 950 B/s, 12.3 kB/s, 1.2 MB/s."""
    for unit, size in (("MB/s", 1e6), ("kB/s", 1e3)):
        if rate >= size:
            return f"{rate / size:.1f} {unit}"
    return f"{rate:.0f} B/s"


def human_duration(seconds: float) -> str:
    """5 s, 3 min 12 s, 2 h 5 min."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


__all__ = ["human_duration", "human_rate"]
