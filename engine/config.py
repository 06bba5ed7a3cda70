"""engine.yaml -> a frozen Config, validated by schemas/engine.schema.json.

Relative paths (rules, state_dir, tokens_file) are taken relative to the configuration file's directory,
so a config and its rules can move together. Errors come back located, like rule errors.
"""

from __future__ import annotations

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
    idle_timeout: float = 15.0  # no complete request headers for this long: the connection is closed
    body_timeout: float = 30.0  # a body not all received this long after its headers: 408


@dataclass(frozen=True)
class SentryConfig:
    client_secret_file: str
    max_age: float = 300.0
    allow_unsigned_legacy: bool = False


@dataclass(frozen=True)
class Config:
    file: str
    rules: tuple[str, ...]
    state_dir: str
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

    @property
    def database(self) -> str:
        return str(FsPath(self.state_dir) / "alert-engine.db")


def default_config_path() -> str:
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def load_config(file: str) -> Config | list[RuleError]:
    """Read and validate a configuration file; every error, located, when it is invalid."""
    doc = load_file(file)
    if isinstance(doc, RuleError):
        return [doc]
    problems = schema_problems(file, doc.data, "engine")
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
    return Config(
        file=doc.file,
        rules=tuple(path(r) for r in ([rules] if isinstance(rules, str) else rules)),
        state_dir=path(data["state_dir"]),
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
            idle_timeout=parse_duration(ingest.get("idle_timeout", "15s")),
            body_timeout=parse_duration(ingest.get("body_timeout", "30s")),
        ),
        log_format=log.get("format"),
        log_level=log.get("level", "info"),
        self_alert_services=tuple(data.get("self_alerts", {}).get("services", ())),
        sentry=SentryConfig(path(sentry["client_secret_file"]), parse_duration(sentry.get("max_age", "5m")),
                            sentry.get("allow_unsigned_legacy", False)) if sentry else None,
    )


def read_secrets(file: str, what: str) -> frozenset[str] | Problem:
    """Secrets (ingest tokens, Sentry client secrets): one per line; blank lines and lines starting with
    `#` are ignored. A file holding none is a problem."""
    try:
        lines = FsPath(file).read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return Problem(file, (), f"cannot read {what} file: {getattr(exc, 'strerror', None) or exc}")
    secrets = frozenset(t for line in lines if (t := line.strip()) and not t.startswith("#"))
    return secrets or Problem(file, (), f"{what} file holds none")
