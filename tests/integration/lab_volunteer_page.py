"""Serve unwall.browser's volunteer page (a page that embeds the widget, and takes reports of
what its frame shows) from inside a lab namespace, for Firefox (unwall.browser.firefox_in's
driver clicks the widget's switch and posts the reports).

Run by test_lab_carrier.py as `ip netns exec NS python lab_volunteer_page.py HOST BROKER_URL
REPORTS`: prints the page's URL on its first line, then appends each report the page makes
to REPORTS (JSON lines) until it is stopped.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from unwall.browser import volunteer_page


async def main(host: str, broker_url: str, reports: Path) -> None:
    async with volunteer_page(host, broker_url) as page:
        print(page.url, flush=True)
        written = 0
        while True:
            await asyncio.sleep(0.5)
            fresh = page.reports[-1:] if page.reports and len(page.reports) != written else []
            written = len(page.reports)
            with reports.open("a") as out:
                for report in fresh:
                    out.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
