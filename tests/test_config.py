"""engine/config.py: the tokens file (scopes, names, the old format, located errors that never quote a
token) and the constant-time lookup of a token."""

from __future__ import annotations

from engine.config import ApiTokens, parse_tokens

FILE = "/etc/alert-engine/tokens"


def parsed(text: str) -> ApiTokens:
    tokens = parse_tokens(FILE, text.splitlines())
    assert isinstance(tokens, ApiTokens), [str(e) for e in tokens]
    return tokens


def errors(text: str) -> list[str]:
    found = parse_tokens(FILE, text.splitlines())
    assert isinstance(found, list), found
    return [str(e) for e in found]


def test_a_line_is_a_token_its_scopes_and_a_name_that_defaults_to_the_line():
    tokens = parsed("# who may call what\n\n"
                    "tok-relay events sentry relay\n"
                    "tok-grafana read\n"
                    "tok-oncall admin,events  on-call team \n")
    relay, grafana, oncall = tokens.tokens
    assert (relay.scopes, relay.name) == (frozenset({"events"}), "sentry relay")
    assert (grafana.scopes, grafana.name) == (frozenset({"read"}), "line 4")
    assert (oncall.scopes, oncall.name) == (frozenset({"admin", "events"}), "on-call team")
    assert tokens.warnings == ()
    assert "tok-" not in repr(tokens)  # a repr (in a log, a traceback) never shows a token


def test_admin_includes_read_but_not_events_and_read_is_only_read():
    oncall, grafana = parsed("a-token admin\nr-token read\n").tokens
    assert [oncall.allows(s) for s in ("events", "read", "admin")] == [False, True, True]
    assert [grafana.allows(s) for s in ("events", "read", "admin")] == [False, True, False]


def test_a_bare_token_the_format_before_scopes_may_only_send_events_with_a_located_warning():
    tokens = parsed("# relay\nold-token\n")
    [token] = tokens.tokens
    assert (token.scopes, token.name) == (frozenset({"events"}), "line 2")
    [warning] = map(str, tokens.warnings)
    assert warning.startswith(f"{FILE}:2:1: warning: a token without scopes may only send events")
    assert "old-token" not in warning


def test_unknown_or_missing_scopes_and_a_repeated_token_are_errors_that_never_quote_a_token():
    found = errors("tok-a events\n"
                   "tok-b  event,read\n"
                   "tok-c ,\n"
                   "tok-a admin\n")
    assert found == [
        f"{FILE}:2:8: unknown scope 'event': the scopes are events, read, admin, separated by commas",
        f"{FILE}:3:7: no scope: the scopes are events, read, admin, separated by commas",
        f"{FILE}:4:1: the same token as on line 1",
    ]
    assert not any("tok-" in e for e in found)


def test_a_file_without_a_token_is_an_error():
    assert errors("# nothing yet\n\n") == [f"{FILE}:1:1: the tokens file holds no token"]


def test_find_returns_the_token_given_and_nothing_for_anything_else():
    tokens = parsed("tok-one events one\ntok-two read two\n")
    assert tokens.find("tok-two").name == "two"
    for given in ("tok-tw", "tok-two ", "", "TOK-TWO", "tok-two\udcff"):
        assert tokens.find(given) is None
    assert tokens.secrets == ("tok-one", "tok-two")
