"""Issue 22, row 12: the secret an egress reports to its brokers with.

The broker answers a report whose Authorization header is not UTF-8 with a 401 like any other
wrong secret (it was a 500 with a traceback in the log, for anyone, as often as they liked);
the egress refuses to send the secret in the clear to another machine (a plain http://
--report-to) unless told to, and then says so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_broker_http import serving

from unwall import cli
from unwall.broker.server import BrokerConfig
from unwall.local import free_port
from unwall.wire import report

SECRET = "the-report-secret-of-these-tests"


def _signed(body: bytes) -> bytes:
    return report.sign(report.report_key(SECRET), body, time.time()).encode()


async def _raw(port: int, authorization: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/egress/carried HTTP/1.1\r\nHost: broker.test\r\nAuthorization: "
        + authorization
        + b"\r\nContent-Type: application/json\r\nContent-Length: 14\r\nConnection: close\r\n"
        + b'\r\n{"offers": []}'
    )
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return reply


@pytest.mark.parametrize(
    "authorization",
    [
        b"Bearer \xff\xfe\x80",
        b"Bearer " + SECRET.encode()[:-1] + b"\xe9",
        b"\xc3\x28",
        b"Bearer " + "\u00e9t\u00e9".encode(),
        b"Bearer " + b"\x80" * 4000,
    ],
    ids=["invalid-utf8", "secret-then-latin1", "bad-utf8-only", "utf8-not-the-secret", "long"],
)
async def test_a_report_with_a_header_that_is_not_utf8_is_a_401(
    authorization: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    config = BrokerConfig(poll_timeout=0.5, answer_timeout=0.5, report_secret=SECRET)
    caplog.set_level(logging.DEBUG)
    async with serving(config, handler_cancellation=True) as broker:
        port = int(broker.url.rsplit(":", 1)[1])
        replies = [await _raw(port, authorization) for _ in range(3)]
        good = await _raw(port, _signed(b'{"offers": []}'))
        # The secret itself, as a bearer token (what an egress sent before): refused.
        bearer = await _raw(port, b"Bearer " + SECRET.encode())
    assert bearer.startswith(b"HTTP/1.1 401"), bearer[:200]
    for reply in replies:
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401"), head
        assert json.loads(body)["error"] == "unauthorized"
    assert good.startswith(b"HTTP/1.1 200"), good[:200]
    text = caplog.text
    assert "Traceback" not in text and "Error handling request" not in text, text[-3000:]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], text[-3000:]


# -- the egress: the secret goes to another machine only over https ---------------------------


def _egress(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    keys = tmp_path / "keys"
    if not keys.exists():
        keygen = [sys.executable, "-m", "unwall", "egress", "keygen", "--key-dir", str(keys)]
        subprocess.run([*keygen, "--broker", "http://127.0.0.1:9/"], check=True, timeout=60)
    config = tmp_path / "unwall.toml"
    config.write_text(f'[egress]\nreport_secret = "{SECRET}"\n')
    config.chmod(0o600)
    return subprocess.Popen(
        [
            sys.executable, "-m", "unwall", "egress", "--config", str(config),
            "--key-dir", str(keys), "--listen", f"127.0.0.1:{free_port()}", *args,
        ],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_the_egress_refuses_to_send_its_secret_in_the_clear(tmp_path: Path) -> None:
    process = _egress(tmp_path, "--report-to", "http://192.0.2.1:8080/")
    try:
        out, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        pytest.fail(f"the egress started:\n{out}")
    assert process.returncode == 2, out
    assert "in the clear" in out and "--report-over-http" in out and "https://" in out, out
    assert SECRET not in out


def test_with_report_over_http_it_starts_and_says_so(tmp_path: Path) -> None:
    process = _egress(tmp_path, "--report-to", "http://192.0.2.1:8080/", "--report-over-http")
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "listening" in line:
                break
    finally:
        process.terminate()
        process.wait(timeout=20)
    out = "".join(lines)
    assert "the report secret crosses the network in the clear" in out, out
    assert "listening" in out, out


@pytest.mark.parametrize(
    ("url", "over_http", "verdict"),
    [
        ("https://broker.example/", False, "ok"),
        ("http://127.0.0.1:8080/", False, "ok"),
        ("http://[::1]:8080/", False, "ok"),
        ("http://localhost:8080", False, "ok"),
        ("http://broker.example/", False, "refused"),
        ("http://10.0.0.2:8080/", False, "refused"),
        ("http://broker.example/", True, "warned"),
        ("ftp://broker.example/", True, "bad"),
        ("broker.example", False, "bad"),
        ("https://", False, "bad"),
    ],
)
def test_report_urls(
    url: str, over_http: bool, verdict: str, caplog: pytest.LogCaptureFixture
) -> None:
    if verdict in ("refused", "bad"):
        with pytest.raises(cli.UsageError) as info:
            cli._report_urls([url], over_http)
        phrase = "in the clear" if verdict == "refused" else "expected https://"
        assert phrase in str(info.value)
        return
    with caplog.at_level(logging.WARNING):
        assert cli._report_urls([url], over_http) == (url,)
    assert ("in the clear" in caplog.text) == (verdict == "warned")
