import email.utils

import pytest

from engine.pagerduty import Verdict, classify, parse_retry_after


@pytest.mark.parametrize(
    ("api", "status", "verdict"),
    [
        ("v2", 202, Verdict.DELIVERED),
        ("v1", 200, Verdict.DELIVERED),
        ("v2", 429, Verdict.RETRY),
        ("v1", 403, Verdict.RETRY),
        ("v2", 403, Verdict.REJECTED),
        ("v2", 500, Verdict.RETRY),
        ("v1", 503, Verdict.RETRY),
        ("v2", None, Verdict.RETRY),
        ("v2", 400, Verdict.REJECTED),
        ("v1", 404, Verdict.REJECTED),
        ("v2", 301, Verdict.REJECTED),
    ],
)
def test_classify(api, status, verdict):
    assert classify(api, status) is verdict


def test_parse_retry_after_seconds_and_http_date():
    now = 1_700_000_000.0
    assert parse_retry_after("30", now) == 30.0
    assert parse_retry_after(" 0.5 ", now) == 0.5
    assert parse_retry_after(email.utils.formatdate(now + 120, usegmt=True), now) == pytest.approx(120, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 120, usegmt=True), now) == 0.0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None
