from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from unwall.local import DemoSite, LocalBridge, local_bridge

ARTIFACTS = Path(os.environ.get("UNWALL_ARTIFACTS", Path(__file__).parents[2] / "artifacts"))


@pytest.fixture
def artifacts() -> Path:
    """Where tests leave files worth keeping (screenshots): ./artifacts by default."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DemoSite]:
    blob_dir = tmp_path_factory.getbasetemp() / "blobs"
    blob_dir.mkdir(exist_ok=True)
    test_site = DemoSite(blob_dir)
    await test_site.start()
    yield test_site
    await test_site.stop()


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[LocalBridge]:
    """Broker, egress, one volunteer and a client, each in its own process; none started."""
    async with local_bridge(tmp_path, broker_answer_timeout=2.0) as running:
        yield running
