"""The stall figures of a watched download (`python -m unwall.lab.fetch`)."""

from __future__ import annotations

import pytest

from unwall.lab.fetch import stall_figures
from unwall.local import Download


def _download(times: list[float]) -> Download:
    download = Download(status=200)
    for n, moment in enumerate(times, 1):
        download.progress.append((moment, n * 1000))
    download.size = len(times) * 1000
    return download


def test_longest_gap_between_chunks_of_a_complete_download() -> None:
    figures = stall_figures(_download([10.5, 10.6, 13.1, 13.2]), 10.0, 99.0, complete=True)
    assert figures["max_stall_s"] == pytest.approx(2.5)
    assert figures["ttfb_s"] == pytest.approx(0.5)
    # a complete download ends with its last byte, not when the watcher returned
    assert figures["seconds"] == pytest.approx(3.2)
    assert figures["bytes"] == 4000 and figures["complete"]


def test_a_download_that_stops_is_one_long_stall() -> None:
    figures = stall_figures(_download([1.0, 1.1, 1.2]), 0.0, 61.2, complete=False)
    assert figures["max_stall_s"] == pytest.approx(60.0)
    assert figures["seconds"] == pytest.approx(61.2)
    assert not figures["complete"]


def test_no_data_at_all() -> None:
    figures = stall_figures(Download(), 0.0, 60.0, complete=False)
    assert figures["bytes"] == 0
    assert figures["ttfb_s"] is None and figures["max_stall_s"] is None


def test_time_to_the_first_megabyte() -> None:
    download = Download(status=200)
    for moment, size in ((0.5, 400_000), (0.9, 999_999), (1.4, 1_000_000), (2.0, 3_000_000)):
        download.progress.append((moment, size))
    download.size = 3_000_000
    assert stall_figures(download, 0.0, 2.0, complete=True)["first_MB_s"] == pytest.approx(1.4)
    assert stall_figures(_download([1.0]), 0.0, 2.0, complete=True)["first_MB_s"] is None
