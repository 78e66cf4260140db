"""`python -m unwall.lab.fetch`: one download through a SOCKS5 proxy, watched for stalls.

`unwall bench --path` runs it in the censored namespace for the downloads through unwall,
where curl's totals say nothing about pauses: it prints one JSON object with the bytes and
seconds of the download, the time to its first byte and `max_stall_s`, the longest time
without data between the first byte and the last (or the time cap, when the download was
cut: a download that stops is one long stall).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from typing import Any

from unwall.local import Download, download_via_socks


def stall_figures(
    download: Download, started: float, ended: float, complete: bool
) -> dict[str, Any]:
    """The figures of a watched download that began at `started` and ended at `ended`."""
    times = [t for t, _ in download.progress]
    if complete and times:
        ended = times[-1]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    if times and not complete:
        gaps.append(ended - times[-1])
    return {
        "bytes": download.size,
        "seconds": round(ended - started, 3),
        "ttfb_s": round(times[0] - started, 3) if times else None,
        # from the request to the first megabyte: how soon a fresh tunnel gets going
        "first_MB_s": next(
            (round(t - started, 3) for t, size in download.progress if size >= 1_000_000), None
        ),
        "max_stall_s": round(max(gaps), 3) if gaps else None,
        "complete": complete,
    }


async def fetch(socks_port: int, url: str, size: int | None, max_time: float) -> dict[str, Any]:
    download = Download()
    started = time.monotonic()
    complete = False
    error = None
    try:
        await download_via_socks(socks_port, url, watch=download, timeout=max_time)
        complete = download.status == 200 and (size is None or download.size == size)
    except TimeoutError:
        error = "hit the time cap"
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    figures = stall_figures(download, started, time.monotonic(), complete)
    if error is not None:
        figures["error"] = error
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unwall.lab.fetch", description=__doc__)
    parser.add_argument("url", help="an http:// URL")
    parser.add_argument("--socks-port", type=int, default=1080, help="SOCKS5 on 127.0.0.1")
    parser.add_argument("--size", type=int, help="the expected body size (for `complete`)")
    parser.add_argument("--max-time", type=float, default=60.0, help="cut the download here")
    args = parser.parse_args(argv)
    figures = asyncio.run(fetch(args.socks_port, args.url, args.size, args.max_time))
    print(json.dumps(figures))
    return 0 if figures["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
