"""engine/logs.py: JSON and text lines, extras, tracebacks, levels, and keys never written in clear."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from engine.logs import Redactor, StructuredFormatter, StructuredHandler, configure, default_format
from engine.rules.ruleset import mask_key

KEY = "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"
OTHER_KEY = "ffffeeeeddddccccbbbbaaaa99998888"
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
log = logging.getLogger("alert_engine.test_logs")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root, engine = logging.getLogger(), logging.getLogger("alert_engine")
    levels = root.level, engine.level
    yield
    for handler in [h for h in root.handlers if isinstance(h, StructuredHandler)]:
        root.removeHandler(handler)
    root.setLevel(levels[0])
    engine.setLevel(levels[1])


def capture(format: str = "json", level: str = "info", secrets: tuple[str, ...] = ()) -> tuple[io.StringIO, Redactor]:
    stream = io.StringIO()
    redactor = configure(format, level, stream)
    redactor.set_secrets(secrets)
    return stream, redactor


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def record(**fields: Any) -> logging.LogRecord:
    created = datetime(2026, 11, 28, 9, 46, 20, 123000, tzinfo=UTC).timestamp()
    base = {"name": "alert_engine.deliver", "levelname": "INFO", "levelno": logging.INFO, "created": created}
    return logging.makeLogRecord({**base, **fields})


def test_json_line_carries_the_fields_and_every_extra() -> None:
    stream, _ = capture()
    log.info("delivered (%d)", 202, extra={"rule": "r", "service": "s", "dedup_key": "d", "status": 202, "attempt": 1})
    (line,) = json_lines(stream)
    assert TS.match(line.pop("ts"))
    assert line == {
        "level": "info",
        "logger": "alert_engine.test_logs",
        "msg": "delivered (202)",
        "rule": "r",
        "service": "s",
        "dedup_key": "d",
        "status": 202,
        "attempt": 1,
    }


def test_json_timestamp_is_utc_with_milliseconds() -> None:
    line = json.loads(StructuredFormatter("json", Redactor()).format(record(msg="x")))
    assert line["ts"] == "2026-11-28T09:46:20.123Z"


def test_extras_that_are_not_json_become_strings() -> None:
    class Thing:
        def __str__(self) -> str:
            return "a thing"

    circular: dict[str, Any] = {}
    circular["self"] = circular
    stream, _ = capture()
    log.info("one", extra={"thing": Thing(), "n": 3})
    log.info("two", extra={"loop": circular, "n": 3})
    first, second = json_lines(stream)
    assert (first["thing"], first["n"]) == ("a thing", 3)
    assert (second["msg"], second["loop"], second["n"]) == ("two", str(circular), 3)


def test_text_line_reads_like_the_documented_example() -> None:
    formatter = StructuredFormatter("text", Redactor())
    line = formatter.format(record(msg="sent", rule="x", service="y", dedup_key="z"))
    assert line == "2026-11-28T09:46:20.123Z INFO alert_engine.deliver: sent rule=x service=y dedup_key=z"


def test_text_extras_are_quoted_only_when_they_must_be() -> None:
    formatter = StructuredFormatter("text", Redactor())
    line = formatter.format(record(msg="m", error="timed out", empty="", detail={"a": [1, 2]}, ok=True))
    assert line.endswith(' error="timed out" empty="" detail={"a":[1,2]} ok=true')


def test_exception_is_in_exc_as_json_and_below_the_line_as_text() -> None:
    for format in ("json", "text"):
        stream, _ = capture(format)
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            log.exception("boom", extra={"rule": "r"})
        if format == "json":
            (line,) = json_lines(stream)
            assert line["msg"] == "boom"
            assert line["exc"].startswith("Traceback (most recent call last):")
            assert line["exc"].endswith("ZeroDivisionError: division by zero")
        else:
            first, *rest = stream.getvalue().splitlines()
            assert first.endswith("ERROR alert_engine.test_logs: boom rule=r")
            assert rest[0] == "Traceback (most recent call last):"
            assert rest[-1] == "ZeroDivisionError: division by zero"


def test_level_filters_our_records_and_keeps_third_party_ones_at_warning_or_above() -> None:
    stream, _ = capture(level="warning")
    log.info("hidden")
    log.warning("shown")
    stream_debug, _ = capture(level="debug")
    log.debug("detail")
    logging.getLogger("aiohttp.access").info("GET /healthz")
    logging.getLogger("apscheduler.scheduler").warning("job missed")
    assert [line["msg"] for line in json_lines(stream)] == ["shown"]
    assert [line["msg"] for line in json_lines(stream_debug)] == ["detail", "job missed"]


def test_configure_again_replaces_the_handler() -> None:
    first, redactor = capture()
    second = io.StringIO()
    assert configure("text", "info", second, redactor) is redactor
    log.info("once")
    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1


def test_unknown_format_or_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        configure("xml", "info", io.StringIO())
    with pytest.raises(ValueError, match="log level"):
        configure("json", "loud", io.StringIO())


@pytest.mark.parametrize("format", ["json", "text"])
def test_a_key_is_masked_wherever_it_appears(format: str) -> None:
    stream, _ = capture(format, secrets=(KEY,))
    log.info("sending with %s", KEY)
    log.info("sent", extra={"service": "sre", "routing_key": KEY})
    log.info("config %r", {"sre": {"service_key": KEY}})
    try:
        raise RuntimeError(f"PagerDuty refused key {KEY}")
    except RuntimeError:
        log.exception("failed")
    out = stream.getvalue()
    assert KEY not in out
    assert out.count(mask_key(KEY)) == 4  # in the message, the extra, the repr and the exception
    if format == "json":
        assert all(line["msg"] for line in json_lines(stream))  # still valid JSON after masking


def test_a_key_that_json_escapes_is_masked_in_its_escaped_form() -> None:
    key = 'quo"te\\slash-key'
    stream, _ = capture(secrets=(key,))
    log.info("sent", extra={"routing_key": key})
    assert json_lines(stream)[0]["routing_key"] == mask_key(key)


def test_the_longest_key_wins_when_one_contains_another() -> None:
    redactor = Redactor(["abcd1234", "abcd12345678"])
    assert redactor.redact("k=abcd12345678 j=abcd1234") == "k=****5678 j=****1234"


def test_set_secrets_replaces_the_whole_set() -> None:
    stream, redactor = capture(secrets=(KEY,))
    redactor.set_secrets([OTHER_KEY])
    log.info("%s %s", KEY, OTHER_KEY)
    assert json_lines(stream)[0]["msg"] == f"{KEY} {mask_key(OTHER_KEY)}"


def test_no_secrets_means_no_pattern_and_text_returned_as_is() -> None:
    redactor = Redactor(["abc", ""])  # too short to mask
    assert not redactor.active
    text = "nothing to hide: abc"
    assert redactor.redact(text) is text
    redactor.set_secrets([KEY])
    assert redactor.active
    redactor.set_secrets([])
    assert not redactor.active


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"INVOCATION_ID": "0f3e6c7d"}, "json"),
        ({"JOURNAL_STREAM": "8:12345"}, "json"),
        ({"TERM": "xterm"}, "text"),
        ({"INVOCATION_ID": ""}, "text"),
    ],
)
def test_default_format_is_json_under_systemd(environ: dict[str, str], expected: str) -> None:
    assert default_format(environ) == expected
