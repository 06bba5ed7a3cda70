"""engine.yaml -> a frozen Config, validated by schemas/engine.schema.json; and the secret files it names.

Relative paths (rules, state_dir, tokens_file, storage.dsn_file) are taken relative to the configuration
file's directory, so a config and its rules can move together. Errors come back located, like rule errors.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

from engine.rules.errors import Problem, RuleError
from engine.rules.load import Document, load_file
from engine.rules.validate import schema_problems
from engine.units import parse_duration, parse_size

DEFAULT_CONFIG = "/etc/alert-engine/engine.yaml"
CONFIG_ENV = "ALERT_ENGINE_CONFIG"


@dataclass(frozen=True)
class PagerDutyConfig:
    url: str = "https://events.pagerduty.com"
    timeout: float = 10.0
    concurrency: int = 16
    give_up_after: float = 24 * 3600.0
    rate_per_key: float = 120.0  # per minute; 0 turns pacing off
    burst: int = 20


@dataclass(frozen=True)
class IngestConfig:
    tokens_file: str | None = None
    max_body: int = 10 * 1024 * 1024
    max_events: int = 10_000  # events in one request
    max_notifications: int = 20_000  # pages the matches of one request may cause
    metrics_need_read: bool = False  # GET /metrics needs a token with `read` (only with a tokens file)
    idle_timeout: float = 15.0  # no complete request headers for this long: the connection is closed
    body_timeout: float = 30.0  # a body not all received this long after its headers: 408


@dataclass(frozen=True)
class SentryConfig:
    client_secret_file: str
    max_age: float = 300.0
    allow_unsigned_legacy: bool = False
    url: str = "https://sentry.io"
    organization: str | None = None

    @property
    def issues_url(self) -> str | None:
        """`{url}/organizations/{organization}/issues/`, where an issue's page is `{id}/`; None without an
        organization."""
        return f"{self.url}/organizations/{self.organization}/issues/" if self.organization else None


SQLITE, POSTGRESQL = "sqlite", "postgresql"


@dataclass(frozen=True)
class StorageConfig:
    backend: str = SQLITE  # SQLITE (a file in state_dir) or POSTGRESQL (dsn or dsn_file)
    dsn: str | None = field(default=None, repr=False)  # may hold a password: never shown
    dsn_file: str | None = None


@dataclass(frozen=True)
class ClusterConfig:
    """How a replica takes part among those sharing a PostgreSQL database (docs/ha.md); seconds."""

    replica_id: str | None = None  # default HOST:PORT
    advertise: str | None = None  # default http://HOST:PORT
    heartbeat: float = 1.0
    decider_lease: float = 10.0
    delivery_lease: float = 60.0


@dataclass(frozen=True)
class Config:
    file: str
    rules: tuple[str, ...]
    state_dir: str | None  # SQLite's; None with PostgreSQL
    host: str = "127.0.0.1"
    port: int = 9595
    reload_on_change: bool = False
    shutdown_grace: float = 10.0
    history_retention: float = 7 * 86400.0
    pagerduty: PagerDutyConfig = field(default_factory=PagerDutyConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    log_format: str | None = None  # None: json under systemd, text otherwise
    log_level: str = "info"
    self_alert_services: tuple[str, ...] = ()
    sentry: SentryConfig | None = None
    storage: StorageConfig = field(default_factory=StorageConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def database(self) -> str:
        """The SQLite database file (with the sqlite backend, which needs state_dir)."""
        assert self.state_dir is not None, "the sqlite backend needs state_dir"
        return str(FsPath(self.state_dir) / "alert-engine.db")


def default_config_path() -> str:
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def load_config(file: str) -> Config | list[RuleError]:
    """Read and validate a configuration file; every error, located, when it is invalid."""
    doc = load_file(file)
    if isinstance(doc, RuleError):
        return [doc]
    problems = (schema_problems(file, doc.data, "engine") or _storage_problems(file, doc.data.get("storage", {}))
                or _cluster_problems(file, doc.data))
    if problems:
        return [doc.error(p) for p in problems]
    return _build(doc)


def _build(doc: Document) -> Config:
    data: dict[str, Any] = doc.data
    base = FsPath(doc.file).resolve().parent

    def path(value: str) -> str:
        return os.path.normpath(base / os.path.expanduser(value))

    host, _, port = data.get("listen", "127.0.0.1:9595").rpartition(":")
    rules = data["rules"]
    pd = data.get("pagerduty", {})
    ingest = data.get("ingest", {})
    log = data.get("log", {})
    sentry = data.get("sources", {}).get("sentry")
    storage = data.get("storage", {})
    cluster = data.get("cluster", {})
    return Config(
        file=doc.file,
        rules=tuple(path(r) for r in ([rules] if isinstance(rules, str) else rules)),
        state_dir=path(data["state_dir"]) if "state_dir" in data else None,
        host=host.strip("[]"),
        port=int(port),
        reload_on_change=data.get("reload_on_change", False),
        shutdown_grace=parse_duration(data.get("shutdown_grace", "10s")),
        history_retention=parse_duration(data.get("history_retention", "7d")),
        pagerduty=PagerDutyConfig(
            url=pd.get("url", PagerDutyConfig.url).rstrip("/"),
            timeout=parse_duration(pd.get("timeout", "10s")),
            concurrency=pd.get("concurrency", PagerDutyConfig.concurrency),
            give_up_after=parse_duration(pd.get("give_up_after", "24h")),
            rate_per_key=float(pd.get("rate_per_key", PagerDutyConfig.rate_per_key)),
            burst=pd.get("burst", PagerDutyConfig.burst),
        ),
        ingest=IngestConfig(
            tokens_file=path(ingest["tokens_file"]) if "tokens_file" in ingest else None,
            max_body=parse_size(ingest.get("max_body", "10MiB")),
            max_events=ingest.get("max_events", IngestConfig.max_events),
            max_notifications=ingest.get("max_notifications", IngestConfig.max_notifications),
            metrics_need_read=ingest.get("metrics_need_read", False),
            idle_timeout=parse_duration(ingest.get("idle_timeout", "15s")),
            body_timeout=parse_duration(ingest.get("body_timeout", "30s")),
        ),
        log_format=log.get("format"),
        log_level=log.get("level", "info"),
        self_alert_services=tuple(data.get("self_alerts", {}).get("services", ())),
        sentry=SentryConfig(path(sentry["client_secret_file"]), parse_duration(sentry.get("max_age", "5m")),
                            sentry.get("allow_unsigned_legacy", False),
                            sentry.get("url", SentryConfig.url).rstrip("/"),
                            sentry.get("organization")) if sentry else None,
        storage=StorageConfig(storage.get("backend", SQLITE), storage.get("dsn"),
                              path(storage["dsn_file"]) if "dsn_file" in storage else None),
        cluster=ClusterConfig(cluster.get("replica_id"), cluster.get("advertise"),
                              parse_duration(cluster.get("heartbeat", "1s")),
                              parse_duration(cluster.get("decider_lease", "10s")),
                              parse_duration(cluster.get("delivery_lease", "60s"))),
    )


def _storage_problems(file: str, storage: dict[str, Any]) -> list[Problem]:
    """PostgreSQL takes exactly one of dsn and dsn_file; SQLite neither."""
    given = [key for key in ("dsn", "dsn_file") if key in storage]
    if storage.get("backend") != POSTGRESQL:
        return [Problem(file, ("storage", key), f"'{key}' is for backend: postgresql") for key in given]
    if len(given) != 1:
        found = "both" if given else "neither"
        return [Problem(file, ("storage",), f"backend postgresql needs one of 'dsn' or 'dsn_file' ({found} given)")]
    return []


def _cluster_problems(file: str, data: dict[str, Any]) -> list[Problem]:
    cluster = data.get("cluster")
    if cluster is None:
        return []
    if data.get("storage", {}).get("backend") != POSTGRESQL:
        return [Problem(file, ("cluster",), "'cluster' is for storage backend: postgresql")]
    heartbeat = parse_duration(cluster.get("heartbeat", "1s"))
    if parse_duration(cluster.get("decider_lease", "10s")) < 3 * heartbeat:
        return [Problem(file, ("cluster", "decider_lease"), "must be at least three heartbeats")]
    if parse_duration(cluster.get("delivery_lease", "60s")) < 3 * heartbeat:
        return [Problem(file, ("cluster", "delivery_lease"), "must be at least three heartbeats")]
    return []


def read_dsn(storage: StorageConfig) -> str | Problem:
    """PostgreSQL's connection string: `dsn`, or the first line of `dsn_file` that is not blank or a `#`
    comment. A problem names the file, never its content."""
    if storage.dsn is not None:
        return storage.dsn
    assert storage.dsn_file is not None
    lines = read_lines(storage.dsn_file, "DSN")
    if isinstance(lines, Problem):
        return lines
    dsn = next((text for line in lines if (text := line.strip()) and not text.startswith("#")), None)
    return dsn or Problem(storage.dsn_file, (), "the DSN file holds no connection string")


def read_lines(file: str, what: str) -> list[str] | Problem:
    """A secrets file's lines; a problem naming the file (never its content) when it cannot be read."""
    try:
        return FsPath(file).read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return Problem(file, (), f"cannot read {what} file: {getattr(exc, 'strerror', None) or exc}")


def parse_secrets(file: str, lines: list[str], what: str) -> frozenset[str] | Problem:
    """Secrets (Sentry client secrets): one per line; blank lines and lines starting with `#` are
    ignored. A file holding none is a problem."""
    secrets = frozenset(t for line in lines if (t := line.strip()) and not t.startswith("#"))
    return secrets or Problem(file, (), f"{what} file holds none")


# The scopes an API token can carry. `admin` includes `read`; `events` is on its own.
EVENTS, READ, ADMIN = "events", "read", "admin"
SCOPES = (EVENTS, READ, ADMIN)
BARE_TOKEN_SCOPES = frozenset({EVENTS})  # a line with no scopes, the format before scopes


@dataclass(frozen=True)
class ApiToken:
    """One line of the tokens file. The secret is never shown: not in a repr, a log line or an answer."""

    secret: str = field(repr=False)
    scopes: frozenset[str]
    name: str  # what logs and a silence's created_by show: given on the line, else `line N`

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or (scope == READ and ADMIN in self.scopes)


@dataclass(frozen=True)
class ApiTokens:
    """The tokens file as read: every token with its scopes and name, and what is worth a warning."""

    tokens: tuple[ApiToken, ...]
    warnings: tuple[RuleError, ...] = ()

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(t.secret for t in self.tokens)

    def find(self, given: str) -> ApiToken | None:
        """The token `given` is, or None: compared with every token in constant time, all of them always."""
        given_bytes = given.encode("utf-8", "surrogateescape")  # a header's undecodable bytes, as sent
        found = None
        for token in self.tokens:
            if hmac.compare_digest(given_bytes, token.secret.encode()):
                found = token
        return found


def parse_tokens(file: str, lines: list[str]) -> ApiTokens | list[RuleError]:
    """The tokens file: `TOKEN [SCOPE[,SCOPE...] [NAME]]` a line, blank lines and `#` comments ignored.

    A line without scopes (the format before scopes) may only send events, with a warning. Errors and
    warnings are located (`FILE:LINE:COL`) and never quote a token.
    """
    tokens: list[ApiToken] = []
    errors: list[RuleError] = []
    warnings: list[RuleError] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        fields = line.split(maxsplit=2)
        if not fields or fields[0].startswith("#"):
            continue
        secret = fields[0]
        if secret in first_line:
            errors.append(RuleError(file, number, 1, None, f"the same token as on line {first_line[secret]}"))
            continue
        first_line[secret] = number
        if len(fields) == 1:
            warnings.append(RuleError(file, number, 1, None, f"a token without scopes may only send events; "
                                      f"write its scopes after it ({', '.join(SCOPES)}): TOKEN events [NAME]",
                                      warning=True))
            scopes = BARE_TOKEN_SCOPES
        else:
            col = line.index(fields[1], line.index(secret) + len(secret)) + 1
            scopes = frozenset(s for s in fields[1].split(",") if s)
            unknown = sorted(scopes - set(SCOPES))
            if unknown or not scopes:
                what = f"unknown scope {', '.join(map(repr, unknown))}" if unknown else "no scope"
                errors.append(RuleError(file, number, col, None,
                                        f"{what}: the scopes are {', '.join(SCOPES)}, separated by commas"))
                continue
        name = fields[2].strip() if len(fields) == 3 else f"line {number}"
        tokens.append(ApiToken(secret, scopes, name))
    if errors:
        return errors
    if not tokens:
        return [RuleError(file, 1, 1, None, "the tokens file holds no token")]
    return ApiTokens(tuple(tokens), tuple(warnings))
