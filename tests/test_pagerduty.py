import email.utils

import pytest

from engine.pagerduty import Verdict, classify, explain, parse_retry_after


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


@pytest.mark.parametrize(
    ("response", "said"),
    [
        ('{"status": "invalid event", "message": "Event object is invalid", "errors": ["\'payload.summary\' is '
         'missing or blank", "Length of \'routing_key\' is incorrect (should be 32 characters)"]}',
         "Event object is invalid: 'payload.summary' is missing or blank; Length of 'routing_key' is incorrect "
         "(should be 32 characters)"),
        ('{"status": "success", "message": "Event processed"}', "Event processed"),
        ('{"errors": ["Service key is the wrong length"]}', "Service key is the wrong length"),
        ('{"status": "unrecognized"}', '{"status": "unrecognized"}'),
        ("<html>\n  <body>Bad Gateway</body>\n</html>", "<html> <body>Bad Gateway</body> </html>"),
        ("no answer within 10s", "no answer within 10s"),
        ("", ""),
    ],
)
def test_explain_gives_pagerdutys_message_and_errors_in_one_line(response, said):
    assert explain(response) == said


def test_explain_is_bounded():
    assert explain("x" * 1000, limit=10) == "x" * 9 + "…"
