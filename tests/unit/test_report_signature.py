"""The egresses' reports are signed, never carry the shared secret (unwall.wire.report)."""

from __future__ import annotations

import pytest

from unwall.wire import report

KEY = report.report_key("the operator's secret")
BODY = b'{"version":1,"offers":["a","b"]}'
NOW = 1_800_000_000.0


def test_a_signed_report_verifies_and_does_not_hold_the_secret() -> None:
    header = report.sign(KEY, BODY, NOW)
    assert "operator" not in header
    assert report.verify(KEY, header, BODY, NOW + report.WINDOW - 1)


@pytest.mark.parametrize(
    ("header", "body", "now"),
    [
        (report.sign(KEY, BODY, NOW), BODY + b" ", NOW),  # another body
        (report.sign(report.report_key("another"), BODY, NOW), BODY, NOW),  # another key
        (report.sign(KEY, BODY, NOW), BODY, NOW + report.WINDOW + 1),  # too old
        (report.sign(KEY, BODY, NOW), BODY, NOW - report.WINDOW - 1),  # from the future
        ("Bearer the operator's secret", BODY, NOW),  # the secret itself
        ("", BODY, NOW),
        ("unwall-hmac t=1, mac=" + "A" * 43 + "\udcff", BODY, NOW),  # a byte not UTF-8
    ],
)
def test_anything_else_is_refused(header: str, body: bytes, now: float) -> None:
    assert not report.verify(KEY, header, body, now)
