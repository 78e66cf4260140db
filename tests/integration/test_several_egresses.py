"""Several egresses behind one broker (issue 12, part 2): each bridge line names its egress
by pin; the broker tells the volunteer where each client goes, from the operator's list."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import aiohttp
import pytest
from test_bridge import curl, sha256
from test_broker_http import OFFER_SDP

from unwall.egress.identity import generate_identity, load_identity, save_identity
from unwall.local import DemoSite, LocalBridge, free_port

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


async def _sessions(port: int) -> int:
    url = f"http://127.0.0.1:{port}/v1/health"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return int((await resp.json())["sessions"])


async def test_two_egresses_two_bridge_lines_each_client_reaches_its_own(
    bridge: LocalBridge, site: DemoSite, tmp_path: Path
) -> None:
    first_pin = bridge.make_key()
    second_dir = tmp_path / "second-egress-keys"
    save_identity(generate_identity(), second_dir)
    second_pin = load_identity(second_dir).pin
    second_port = free_port()
    second_url = f"ws://127.0.0.1:{second_port}/v1/relay"
    await bridge.start_broker(
        extra=(
            "--egress", f"{first_pin}={bridge.egress_url}",
            "--egress", f"{second_pin}={second_url}",
        )
    )  # fmt: skip
    await bridge.start_egress()
    second = await bridge.spawn(
        "egress", "egress", "--listen", f"127.0.0.1:{second_port}",
        "--key-dir", str(second_dir), "--allow", "127.0.0.0/8", "--ports", "all",
    )  # fmt: skip
    await bridge._wait_http(second, f"http://127.0.0.1:{second_port}/v1/health")
    # One volunteer, configured with the first egress and allowed the second (its operator
    # names it: an address, plain ws://): the broker sends it there for the second pin.
    await bridge.start_volunteer(extra=("--relay-host", f"ws://127.0.0.1:{second_port}"))
    await bridge.start_client(pin=first_pin)
    socks2, http2 = free_port(), free_port()
    await bridge.start_client(pin=second_pin, socks_port=socks2, http_port=http2)
    _, digest = site.blob(500_000)
    for port in (bridge.socks_port, socks2):
        code, body, err = await curl(
            "--socks5-hostname", f"127.0.0.1:{port}", f"{site.url}/blob/500000"
        )
        assert code == 0, err
        assert sha256(body) == digest
    # Each egress carries exactly its own client's session (a wrong egress would fail the
    # client's pin check, and its handshake with it).
    assert await _sessions(bridge.egress_port) == 1
    assert await _sessions(second_port) == 1


async def test_a_pin_the_broker_does_not_list_is_refused_clearly(bridge: LocalBridge) -> None:
    pin = bridge.make_key()
    other = generate_identity()
    await bridge.start_broker(extra=("--egress", f"{pin}={bridge.egress_url}"))
    from unwall.wire.broker import ClientOffer, decode_error, encode

    body = encode(ClientOffer(OFFER_SDP, egress=other.pin))
    url = f"{bridge.broker_url}/v1/client/offer"
    async with aiohttp.ClientSession() as http, http.post(url, data=body) as resp:
        assert resp.status == 400
        error = decode_error(await resp.read())
    assert error.code == "unknown_egress"
    assert "bridge line" in error.message
    await asyncio.sleep(0)


async def test_a_malformed_egress_list_entry_is_a_usage_error() -> None:
    process = await asyncio.create_subprocess_exec(
        str(Path(__file__).parents[2] / ".venv/bin/unwall"),
        "broker", "--egress", "sha256:abc=http://x/",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2
    assert b"--egress" in stderr and b"PIN=ws(s)://" in stderr
