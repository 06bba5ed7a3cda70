"""The daemon's Prometheus metrics: a small facade over `prometheus_client`.

The rest of the engine asks a `Registry` for counters, gauges and histograms and updates them with the
label values as keywords; prometheus_client writes the exposition format:

    registry = Registry()
    sent = registry.counter("alert_engine_notifications_sent_total", "Notifications delivered.", ["service"])
    sent.inc(service="db")
    registry.render()
    # HELP alert_engine_notifications_sent_total Notifications delivered.
    # TYPE alert_engine_notifications_sent_total counter
    alert_engine_notifications_sent_total{service="db"} 1.0

Each `Registry` has a `CollectorRegistry` of its own, never prometheus_client's global one, so that many
daemons or deliverers built in one process (the tests) do not collide. Asking a registry twice for the
same name returns the same metric (a component restarted in the same process keeps its series); asking
with another type, other label names or other buckets is an error.

Series exist from the start, so that `rate()` and `increase()` work from the first scrape: a metric
without labels is at 0 at once, and `prime(label, values)` gives every counter and histogram labelled by
that one label a series at 0 for each value (the daemon primes `service` with the services of each rule
set it loads). Metrics are updated from the event loop thread only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import prometheus_client
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

# `_created` series double every counter and histogram series for a timestamp that alerting on rates
# never reads; prometheus_client's switch for them is process-wide, and this is the process's metrics.
prometheus_client.disable_created_metrics()

CONTENT_TYPE = CONTENT_TYPE_LATEST  # of `render()`'s text, for `GET /metrics`
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)

LabelValues = tuple[Any, ...]  # as given; prometheus_client writes them with str()


class _Family:
    """One metric and its series, one per combination of label values (cached: the hot path is a dict
    look-up, not prometheus_client's `labels()`)."""

    primable = False  # whether `Registry.prime` gives it series at 0

    def __init__(self, metric: Any, name: str, labelnames: Sequence[str]) -> None:
        self._metric = metric
        self.name = name
        self.labelnames = tuple(labelnames)
        self._series: dict[LabelValues, Any] = {}

    def _key(self, labels: dict[str, Any]) -> LabelValues:
        try:
            key = tuple(map(labels.__getitem__, self.labelnames))
        except KeyError:
            key = None
        if key is None or len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name}: labels {sorted(labels)} given, {list(self.labelnames)} expected")
        return key

    def _child(self, labels: dict[str, Any]) -> Any:
        key = self._key(labels)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = self._metric.labels(*key) if key else self._metric
        return series

    def prime(self, primed: dict[str, tuple[str, ...]]) -> None:
        if self.primable and len(self.labelnames) == 1:
            [label] = self.labelnames
            for value in primed.get(label, ()):
                self._child({label: value})


class Counter(_Family):
    """A value that only goes up: `inc(service="db")`."""

    primable = True

    def inc(self, amount: float = 1.0, **labels: Any) -> None:
        self._child(labels).inc(amount)

    def get(self, **labels: Any) -> float:
        """The value of one series (0 when it has none yet)."""
        wanted = {n: str(v) for n, v in zip(self.labelnames, self._key(labels), strict=True)}
        for family in self._metric.collect():
            for sample in family.samples:
                if sample.name == family.name + "_total" and sample.labels == wanted:
                    return float(sample.value)
        return 0.0


class Gauge(_Family):
    """A value that goes up and down: `set(3)`, or `set(1, file=..., sha256=...)`."""

    def set(self, value: float, **labels: Any) -> None:
        self._child(labels).set(value)

    def clear(self) -> None:
        """Forget every labelled series (for info-style gauges whose label sets change, like files)."""
        self._metric.clear()
        self._series.clear()


class Histogram(_Family):
    """Observations counted into cumulative buckets (`le`), with their sum and count."""

    primable = True

    def __init__(self, metric: Any, name: str, labelnames: Sequence[str], buckets: tuple[float, ...]) -> None:
        super().__init__(metric, name, labelnames)
        self.buckets = buckets

    def observe(self, value: float, **labels: Any) -> None:
        self._child(labels).observe(value)


class Registry:
    """The metrics of one daemon, rendered together for `GET /metrics`. With `process_metrics`, also the
    process's own (`process_*`: CPU, memory, open files; `python_info`, `python_gc_*`)."""

    def __init__(self, *, process_metrics: bool = False) -> None:
        self._registry = CollectorRegistry()
        self._families: dict[str, _Family] = {}
        self._primed: dict[str, tuple[str, ...]] = {}
        if process_metrics:
            prometheus_client.ProcessCollector(registry=self._registry)
            prometheus_client.PlatformCollector(registry=self._registry)
            prometheus_client.GCCollector(registry=self._registry)

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._get_or_add(Counter, prometheus_client.Counter, name, help, labelnames)

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._get_or_add(Gauge, prometheus_client.Gauge, name, help, labelnames)

    def histogram(
        self, name: str, help: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram:
        bounds = _bounds(buckets)
        histogram = self._get_or_add(Histogram, prometheus_client.Histogram, name, help, labelnames, buckets=bounds)
        if histogram.buckets != bounds:
            raise ValueError(f"metric {name} already registered with other buckets")
        return histogram

    def prime(self, label: str, values: Iterable[str]) -> None:
        """Every counter and histogram labelled by `label` alone, now and registered later, gets a series
        at 0 for each of `values` (series of values primed before stay, with what they counted)."""
        self._primed[label] = tuple(values)
        for family in self._families.values():
            family.prime(self._primed)

    def _get_or_add(self, facade: type[Any], kind: type[Any], name: str, help: str, labelnames: Sequence[str],
                    **kwargs: Any) -> Any:
        existing = self._families.get(name)
        if existing is not None:
            if type(existing) is not facade or existing.labelnames != tuple(labelnames):
                raise ValueError(f"metric {name} already registered as {type(existing).__name__.lower()} "
                                 f"with labels {list(existing.labelnames)}")
            return existing
        metric = kind(name, help, labelnames, registry=self._registry, **kwargs)
        family = self._families[name] = facade(metric, name, labelnames, **kwargs)
        family.prime(self._primed)
        return family

    def render(self) -> str:
        """Every metric in the Prometheus text exposition format (`CONTENT_TYPE`)."""
        return generate_latest(self._registry).decode()


def _bounds(buckets: Sequence[float]) -> tuple[float, ...]:
    """Sorted bucket upper bounds, ending with +Inf."""
    bounds = sorted(float(b) for b in buckets)
    if not bounds or bounds[-1] != math.inf:
        bounds.append(math.inf)
    return tuple(bounds)
