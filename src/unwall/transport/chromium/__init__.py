"""The Chromium engine (`engine.py`, the Python driver) and the page it runs in the browser
(`engine.html`, `peer.js`; the media carrier: `media.js` and `carrier-worker.js`)."""

from unwall.transport.chromium.engine import (
    CHROMIUM,
    ChromiumEngine,
    ChromiumPeer,
    chromium_missing,
)

__all__ = ["CHROMIUM", "ChromiumEngine", "ChromiumPeer", "chromium_missing"]
