"""deploy/: the systemd unit carries the settings the daemon relies on, engine.yaml is the documented config, and
the first rule file starts it with one key.

With `systemd-analyze` on PATH (CI installs it) the unit is also verified and its exposure scored by systemd
itself; without it those two tests are skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.config import Config, load_config
from engine.units import parse_duration

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNIT = DEPLOY / "alert-engine.service"
CONFIG = DEPLOY / "engine.yaml"
INSTALLED = "/usr/local/bin/alert-engine"
CONFIG_PATH = "/etc/alert-engine/engine.yaml"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def directives(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value in order (systemd keys such as SystemCallFilter= may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"line {number}: continuation lines are not used in this unit"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"line {number}: not KEY=VALUE inside a section: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


UNIT_DIRECTIVES = directives(UNIT.read_text())
SERVICE = UNIT_DIRECTIVES["Service"]

REQUIRED_SERVICE = {
    "Type": ["notify"],
    "NotifyAccess": ["main"],
    "ExecStartPre": [f"{INSTALLED} check --config {CONFIG_PATH}"],
    "ExecStart": [f"{INSTALLED} run --config {CONFIG_PATH}"],
    "ExecReload": ["/bin/kill -HUP $MAINPID"],
    "Restart": ["on-failure"],
    "RestartSec": ["2s"],
    "WatchdogSec": ["30s"],
    "TimeoutStopSec": ["30s"],
    "StateDirectory": ["alert-engine"],
    "StateDirectoryMode": ["0700"],
    "ConfigurationDirectory": ["alert-engine"],
    "DynamicUser": ["yes"],
    "EnvironmentFile": ["-/etc/alert-engine/keys.env"],
    "NoNewPrivileges": ["yes"],
    "ProtectSystem": ["strict"],
    "ProtectHome": ["yes"],
    "PrivateTmp": ["yes"],
    "PrivateDevices": ["yes"],
    "ProtectKernelTunables": ["yes"],
    "ProtectKernelModules": ["yes"],
    "ProtectKernelLogs": ["yes"],
    "ProtectControlGroups": ["yes"],
    "ProtectClock": ["yes"],
    "ProtectHostname": ["yes"],
    "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
    "RestrictNamespaces": ["yes"],
    "RestrictRealtime": ["yes"],
    "RestrictSUIDSGID": ["yes"],
    "LockPersonality": ["yes"],
    "MemoryDenyWriteExecute": ["yes"],
    "SystemCallFilter": ["@system-service", "~@privileged @resources"],
    "SystemCallArchitectures": ["native"],
    "CapabilityBoundingSet": [""],
    "AmbientCapabilities": [""],
    "UMask": ["0077"],
    "LimitNOFILE": ["65536"],
}


def test_unit_keeps_restarting_however_often_a_start_fails() -> None:
    assert UNIT_DIRECTIVES["Unit"]["StartLimitIntervalSec"] == ["0"]


@pytest.mark.parametrize(("key", "values"), REQUIRED_SERVICE.items(), ids=list(REQUIRED_SERVICE))
def test_unit_service_section_has(key: str, values: list[str]) -> None:
    assert SERVICE.get(key) == values


def test_unit_is_installed_into_multi_user_target() -> None:
    assert UNIT_DIRECTIVES["Install"] == {"WantedBy": ["multi-user.target"]}


def test_unit_gives_the_drain_time_to_finish_before_systemd_kills() -> None:
    config = load_config(str(CONFIG))
    assert isinstance(config, Config), config
    assert parse_duration(SERVICE["TimeoutStopSec"][0]) > config.shutdown_grace


def test_unit_shows_a_commented_service_key_credential() -> None:
    assert re.search(r"^#\s*LoadCredential=\w+:/etc/alert-engine/", UNIT.read_text(), re.MULTILINE)


def test_tokens_file_in_config_is_where_the_unit_puts_the_tokens_credential() -> None:
    credentials = dict(value.split(":", 1) for value in SERVICE["LoadCredential"])
    tokens_file = yaml.safe_load(CONFIG.read_text())["ingest"]["tokens_file"]
    directory, _, name = tokens_file.rpartition("/")
    assert directory == f"/run/credentials/{UNIT.name}"
    assert credentials[name] == "/etc/alert-engine/tokens"


def test_example_config_has_exactly_the_documented_keys() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config == {
        "listen": "127.0.0.1:9595",
        "rules": ["/etc/alert-engine/rules"],
        "state_dir": "/var/lib/alert-engine",
        "reload_on_change": False,
        "shutdown_grace": "10s",
        "history_retention": "7d",
        "pagerduty": {
            "url": "https://events.pagerduty.com",
            "timeout": "10s",
            "concurrency": 16,
            "give_up_after": "24h",
            "rate_per_key": 120,
            "burst": 20,
        },
        "ingest": {"tokens_file": "/run/credentials/alert-engine.service/tokens", "metrics_need_read": False,
                   "max_body": "10MiB", "max_events": 10000, "max_notifications": 20000,
                   "idle_timeout": "15s", "body_timeout": "30s"},
        "log": {"format": "json", "level": "info"},
        "self_alerts": {"services": ["sre"]},
    }


def test_example_config_is_accepted_by_the_daemon() -> None:
    config = load_config(str(CONFIG))
    assert isinstance(config, Config), [str(e) for e in config]
    assert (config.host, config.port, config.log_format) == ("127.0.0.1", 9595, "json")


def test_example_config_state_dir_is_the_units_state_directory() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["state_dir"] == "/var/lib/" + SERVICE["StateDirectory"][0]
    assert CONFIG_PATH.startswith("/etc/" + SERVICE["ConfigurationDirectory"][0] + "/")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (.ci/run installs it)")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart= binaries exist: point them at this venv's alert-engine instead.
    here = Path(sys.executable).parent / "alert-engine"
    if not here.exists():
        pytest.skip(f"{here} is not installed (pip install -e .)")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED, str(here)))
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "info", "SYSTEMD_PAGER": ""}
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True, env=env, timeout=60
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    # Unknown keys and unparsable values are only warnings ("..., ignoring") with exit status 0.
    complaints = [line for line in output.splitlines() if re.search(r"unknown|failed|ignoring", line, re.IGNORECASE)]
    assert complaints == []


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (.ci/run installs it)")
def test_systemd_analyze_security_scores_the_unit_as_well_hardened() -> None:
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", "--threshold=20", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "--offline" in done.stderr and done.returncode != 0 and "Overall exposure" not in done.stdout:
        pytest.skip(f"this systemd-analyze cannot score a unit file offline: {done.stderr.strip()}")
    assert done.returncode == 0, done.stdout[-400:] + done.stderr  # exposure above 2.0 (of 10) fails


FIRST_RULES = DEPLOY / "rules" / "first.yaml"
PLACEHOLDER_KEY = "0123456789abcdef0123456789abcdef"  # 32 characters, like PagerDuty's keys


def _alert_engine(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`alert-engine ARGS` with only the key variables in `env` (none inherited)."""
    exe = Path(sys.executable).with_name("alert-engine")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PD_")}
    return subprocess.run([str(exe), *args], input=stdin, capture_output=True, text=True, env={**clean, **env},
                          timeout=60)


def test_the_first_rule_file_starts_the_example_config_with_one_key(tmp_path: Path) -> None:
    config = yaml.safe_load(CONFIG.read_text())
    config.update(rules=[str(FIRST_RULES.parent)], state_dir=str(tmp_path / "state"))
    del config["ingest"]["tokens_file"]  # a credential only the running unit has
    first = tmp_path / "engine.yaml"
    first.write_text(yaml.safe_dump(config))

    ok = _alert_engine("check", "--config", str(first), env={"PD_SRE_KEY": PLACEHOLDER_KEY})
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, f"ok: {first}; 1 rule, 1 service in 1 file\n", "")
    missing = _alert_engine("check", "--config", str(first), env={})
    assert missing.returncode == 1
    assert "PD_SRE_KEY" in missing.stderr and missing.stderr.count("environment variable") == 1


def test_the_first_rule_pages_sre_for_a_critical_event() -> None:
    event = '{"level": "critical", "service": "web", "host": "web-1", "message": "disk full"}'
    done = _alert_engine("eval", str(FIRST_RULES), "--events", "-", env={"PD_SRE_KEY": PLACEHOLDER_KEY}, stdin=event)
    [page] = [json.loads(line) for line in done.stdout.splitlines()]
    assert (page["service"], page["body"]["dedup_key"]) == ("sre", "critical-events/web/web-1")
    assert page["body"]["payload"]["summary"] == "web on web-1: disk full"
