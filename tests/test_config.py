"""engine/config.py: the tokens file (scopes, names, the old format, located errors that never quote a
token) and the constant-time lookup of a token; the storage settings and the DSN file."""

from __future__ import annotations

from pathlib import Path

from engine.config import (
    POSTGRESQL,
    SQLITE,
    ApiTokens,
    ClusterConfig,
    Config,
    StorageConfig,
    load_config,
    parse_tokens,
    read_dsn,
)
from engine.rules.errors import Problem

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


def config_errors(path: Path, text: str) -> list[str]:
    path.write_text(text)
    found = load_config(str(path))
    assert isinstance(found, list), found
    return [str(e) for e in found]


def test_storage_is_sqlite_in_state_dir_by_default_or_postgresql_with_a_dsn_or_a_dsn_file(tmp_path):
    (tmp_path / "engine.yaml").write_text("rules: [rules]\nstate_dir: state\n")
    sqlite = load_config(str(tmp_path / "engine.yaml"))
    assert isinstance(sqlite, Config)
    assert (sqlite.storage, sqlite.database) == (StorageConfig(SQLITE), str(tmp_path / "state" / "alert-engine.db"))
    (tmp_path / "pg.yaml").write_text("rules: [rules]\nstorage: {backend: postgresql, dsn_file: secrets/dsn}\n")
    pg = load_config(str(tmp_path / "pg.yaml"))
    assert isinstance(pg, Config)
    assert (pg.storage, pg.state_dir) == (StorageConfig(POSTGRESQL, None, str(tmp_path / "secrets" / "dsn")), None)
    dsn = "postgresql://engine:hunter2-hunter2@db/alerts"
    assert "hunter2" not in repr(StorageConfig(POSTGRESQL, dsn))


def test_storage_settings_that_do_not_fit_are_located_errors(tmp_path):
    path = tmp_path / "engine.yaml"
    assert config_errors(path, "rules: [r]\n") == [f"{path}:1:1: missing required key 'state_dir'"]
    assert config_errors(path, "rules: [r]\nstorage: {backend: postgresql}\n") == [
        f"{path}:2:1: backend postgresql needs one of 'dsn' or 'dsn_file' (neither given)"]
    assert config_errors(path, "rules: [r]\nstorage: {backend: postgresql, dsn: x, dsn_file: y}\n") == [
        f"{path}:2:1: backend postgresql needs one of 'dsn' or 'dsn_file' (both given)"]
    assert config_errors(path, "rules: [r]\nstate_dir: s\nstorage:\n  dsn: postgresql://db/x\n") == [
        f"{path}:4:3: 'dsn' is for backend: postgresql"]
    assert config_errors(path, "rules: [r]\nstate_dir: s\nstorage: {backend: mysql}\n") == [
        f"{path}:3:11: 'backend' must be one of sqlite, postgresql, not 'mysql'"]


def test_cluster_settings_are_for_postgresql_and_leases_outlast_three_heartbeats(tmp_path):
    path = tmp_path / "engine.yaml"
    pg = "rules: [r]\nstorage: {backend: postgresql, dsn: x}\n"
    path.write_text(pg + "cluster: {replica_id: pager-1, advertise: 'http://pager-1:9595', decider_lease: 5s}\n")
    config = load_config(str(path))
    assert isinstance(config, Config)
    assert config.cluster == ClusterConfig("pager-1", "http://pager-1:9595", 1.0, 5.0, 60.0)
    assert config_errors(path, "rules: [r]\nstate_dir: s\ncluster: {replica_id: a}\n") == [
        f"{path}:3:1: 'cluster' is for storage backend: postgresql"]
    assert config_errors(path, pg + "cluster: {heartbeat: 4s}\n") == [
        f"{path}:3:1: must be at least three heartbeats"]
    [bad_id] = config_errors(path, pg + "cluster: {replica_id: 'a b'}\n")
    assert bad_id.startswith(f"{path}:3:11: 'replica_id' is not valid: 'a b'")


def test_the_dsn_file_gives_its_first_line_and_problems_never_quote_it(tmp_path):
    dsn = tmp_path / "dsn"
    dsn.write_text("# alert-engine's database\n\n  postgresql://engine:pw@db/alerts  \nignored\n")
    assert read_dsn(StorageConfig(POSTGRESQL, dsn_file=str(dsn))) == "postgresql://engine:pw@db/alerts"
    assert read_dsn(StorageConfig(POSTGRESQL, "host=db")) == "host=db"
    dsn.write_text("# nothing yet\n")
    assert read_dsn(StorageConfig(POSTGRESQL, dsn_file=str(dsn))) == Problem(
        str(dsn), (), "the DSN file holds no connection string")
    missing = read_dsn(StorageConfig(POSTGRESQL, dsn_file=str(tmp_path / "missing")))
    assert isinstance(missing, Problem) and missing.message == "cannot read DSN file: No such file or directory"
