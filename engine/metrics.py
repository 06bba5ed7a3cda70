"""A tiny Prometheus registry: counters, gauges and histograms rendered in the text exposition format.

No dependency. Every metric is a family of series keyed by its label values:

    registry = Registry()
    sent = registry.counter("alert_engine_notifications_sent_total", "Notifications delivered.", ["service"])
    sent.labels(service="db").inc()
    registry.render()
    # HELP alert_engine_notifications_sent_total Notifications delivered.
    # TYPE alert_engine_notifications_sent_total counter
    alert_engine_notifications_sent_total{service="db"} 1

Asking the registry twice for the same name returns the same metric (so a component restarted in the
same process keeps its series); asking with a different type or label names is an error. Metrics are
updated from the event loop thread only.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)

LabelValues = tuple[str, ...]
Sample = tuple[str, tuple[tuple[str, str], ...], float]  # name suffix, (label, value) pairs, value


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it: integers without a fraction, `+Inf`, `-Inf`, `NaN`."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{n}="{escape_label_value(v)}"' for n, v in pairs) + "}"


def _bounds(buckets: Sequence[float]) -> tuple[float, ...]:
    """Sorted bucket upper bounds, ending with +Inf."""
    bounds = sorted(float(b) for b in buckets)
    if not bounds or bounds[-1] != math.inf:
        bounds.append(math.inf)
    return tuple(bounds)


class _Metric(ABC):
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames: LabelValues = tuple(labelnames)

    def _key(self, labels: dict[str, Any]) -> LabelValues:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: labels {sorted(labels)} given, {list(self.labelnames)} expected")
        return tuple(str(labels[n]) for n in self.labelnames)

    def _pairs(self, key: LabelValues) -> tuple[tuple[str, str], ...]:
        return tuple(zip(self.labelnames, key, strict=True))

    @abstractmethod
    def samples(self) -> Iterable[Sample]:
        """Every sample of every series of this metric."""

    def render(self) -> str:
        lines = [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for suffix, pairs, value in self.samples():
            lines.append(f"{self.name}{suffix}{_label_text(pairs)} {format_value(value)}")
        return "\n".join(lines) + "\n"


class Counter(_Metric):
    """A value that only goes up. `inc()` without labels, `labels(**values).inc()` with them."""

    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[LabelValues, float] = {}

    def inc(self, amount: float = 1.0, **labels: Any) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot decrease (inc by {amount})")
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def labels(self, **labels: Any) -> _Child:
        return _Child(self, labels)

    def get(self, **labels: Any) -> float:
        return self._values.get(self._key(labels), 0.0)

    def samples(self) -> Iterable[Sample]:
        for key in sorted(self._values):
            yield "", self._pairs(key), self._values[key]


class Gauge(_Metric):
    """A value that goes up and down: set it, or give it a function read at each render."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[LabelValues, float] = {}
        self._functions: dict[LabelValues, Callable[[], float]] = {}

    def set(self, value: float, **labels: Any) -> None:
        key = self._key(labels)
        self._functions.pop(key, None)
        self._values[key] = float(value)

    def inc(self, amount: float = 1.0, **labels: Any) -> None:
        self.set(self.get(**labels) + amount, **labels)

    def dec(self, amount: float = 1.0, **labels: Any) -> None:
        self.inc(-amount, **labels)

    def set_function(self, function: Callable[[], float], **labels: Any) -> None:
        key = self._key(labels)
        self._values.pop(key, None)
        self._functions[key] = function

    def labels(self, **labels: Any) -> _Child:
        return _Child(self, labels)

    def clear(self) -> None:
        """Forget every labelled value (for info-style gauges whose label sets change, like files)."""
        self._values.clear()
        self._functions.clear()

    def get(self, **labels: Any) -> float:
        key = self._key(labels)
        if key in self._functions:
            return float(self._functions[key]())
        return self._values.get(key, 0.0)

    def samples(self) -> Iterable[Sample]:
        for key in sorted(self._values.keys() | self._functions.keys()):
            value = self._functions[key]() if key in self._functions else self._values[key]
            yield "", self._pairs(key), float(value)


class Histogram(_Metric):
    """Observations counted into cumulative buckets (`le`), with their sum and count."""

    kind = "histogram"

    def __init__(
        self, name: str, help: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> None:
        super().__init__(name, help, labelnames)
        if "le" in self.labelnames:
            raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
        self.buckets = _bounds(buckets)
        self._counts: dict[LabelValues, list[int]] = {}  # observations per bucket (not cumulative)
        self._sums: dict[LabelValues, float] = {}

    def observe(self, value: float, **labels: Any) -> None:
        key = self._key(labels)
        counts = self._counts.setdefault(key, [0] * len(self.buckets))
        counts[next(i for i, bound in enumerate(self.buckets) if value <= bound)] += 1
        self._sums[key] = self._sums.get(key, 0.0) + value

    def labels(self, **labels: Any) -> _Child:
        return _Child(self, labels)

    def count(self, **labels: Any) -> int:
        return sum(self._counts.get(self._key(labels), ()))

    def samples(self) -> Iterable[Sample]:
        for key in sorted(self._counts):
            pairs = self._pairs(key)
            cumulative = 0
            for bound, n in zip(self.buckets, self._counts[key], strict=True):
                cumulative += n
                yield "_bucket", (*pairs, ("le", format_value(bound))), cumulative
            yield "_sum", pairs, self._sums[key]
            yield "_count", pairs, cumulative


class _Child:
    """One series of a labelled metric: `metric.labels(service="db").inc()`."""

    def __init__(self, metric: Any, labels: dict[str, Any]) -> None:
        metric._key(labels)  # fail early on wrong label names
        self._metric = metric
        self._labels = labels

    def inc(self, amount: float = 1.0) -> None:
        self._metric.inc(amount, **self._labels)

    def dec(self, amount: float = 1.0) -> None:
        self._metric.dec(amount, **self._labels)

    def set(self, value: float) -> None:
        self._metric.set(value, **self._labels)

    def set_function(self, function: Callable[[], float]) -> None:
        self._metric.set_function(function, **self._labels)

    def observe(self, value: float) -> None:
        self._metric.observe(value, **self._labels)

    def get(self) -> float:
        return self._metric.get(**self._labels)


class Registry:
    """The metrics of one process, rendered together for `GET /metrics`."""

    CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._get_or_add(Counter, name, help, labelnames)

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._get_or_add(Gauge, name, help, labelnames)

    def histogram(
        self, name: str, help: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram:
        histogram = self._get_or_add(Histogram, name, help, labelnames, buckets=buckets)
        if histogram.buckets != _bounds(buckets):
            raise ValueError(f"metric {name} already registered with other buckets")
        return histogram

    def _get_or_add(self, cls: type, name: str, help: str, labelnames: Sequence[str], **kwargs: Any) -> Any:
        if not _valid_name(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _valid_name(label) or ":" in label or label.startswith("__"):
                raise ValueError(f"metric {name}: invalid label name {label!r}")
        existing = self._metrics.get(name)
        if existing is None:
            metric = cls(name, help, labelnames, **kwargs)
            self._metrics[name] = metric
            return metric
        if type(existing) is not cls or existing.labelnames != tuple(labelnames):
            raise ValueError(
                f"metric {name} already registered as {existing.kind} with labels {list(existing.labelnames)}"
            )
        return existing

    def render(self) -> str:
        """Every metric in the Prometheus text exposition format (version 0.0.4), sorted by name."""
        return "".join(self._metrics[name].render() for name in sorted(self._metrics))


def _valid_name(name: str) -> bool:
    if not name or name[0].isdigit():
        return False
    return all(c.isascii() and (c.isalnum() or c in "_:") for c in name)
