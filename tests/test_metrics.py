import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from engine.metrics import CONTENT_TYPE, Registry


def samples(registry: Registry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the rendered text, read back by prometheus_client's own parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(registry.render())
        for s in family.samples
    }


def test_counter_renders_help_type_and_labelled_series():
    registry = Registry()
    sent = registry.counter("alert_engine_sent_total", "Notifications sent.", ["service"])
    sent.inc(service="web")
    sent.inc(2, service="db")
    sent.inc(service="db")
    assert sent.get(service="db") == 3
    assert sent.get(service="nobody") == 0
    assert registry.render() == (
        "# HELP alert_engine_sent_total Notifications sent.\n"
        "# TYPE alert_engine_sent_total counter\n"
        'alert_engine_sent_total{service="web"} 1.0\n'
        'alert_engine_sent_total{service="db"} 3.0\n'
    )


def test_label_values_and_help_are_escaped():
    registry = Registry()
    counter = registry.counter("x_total", "a \\ back\nslash", ["rule"])
    counter.inc(rule='say "hi"\\now\n')
    text = registry.render()
    assert "# HELP x_total a \\\\ back\\nslash\n" in text
    assert 'x_total{rule="say \\"hi\\"\\\\now\\n"} 1.0\n' in text
    assert samples(registry)[("x_total", (("rule", 'say "hi"\\now\n'),))] == 1


def test_counter_refuses_to_go_down_and_wrong_labels():
    counter = Registry().counter("c_total", "c", ["service"])
    with pytest.raises(ValueError, match="non-negative"):
        counter.inc(-1, service="a")
    with pytest.raises(ValueError, match="labels"):
        counter.inc(rule="a")
    with pytest.raises(ValueError, match="labels"):
        counter.inc(service="a", rule="b")
    with pytest.raises(ValueError, match="labels"):
        counter.get()


def test_gauges_are_set_and_an_info_gauge_is_cleared():
    registry = Registry()
    depth = registry.gauge("outbox_depth", "Notifications waiting.")
    depth.set(5)
    files = registry.gauge("rule_file_info", "Files.", ["file", "sha256"])
    files.set(1, file="a.yaml", sha256="aa")
    files.clear()
    files.set(1, file="b.yaml", sha256="bb")
    assert samples(registry) == {
        ("outbox_depth", ()): 5,
        ("rule_file_info", (("file", "b.yaml"), ("sha256", "bb"))): 1,
    }
    assert "# TYPE outbox_depth gauge\n" in registry.render()


def test_histogram_buckets_are_cumulative_with_sum_count_and_inf():
    registry = Registry()
    latency = registry.histogram("latency_seconds", "Latency.", ["service"], buckets=[1.0, 0.1])
    for value in (0.05, 0.5, 0.5, 3.0):
        latency.observe(value, service="db")
    assert registry.render().splitlines() == [
        "# HELP latency_seconds Latency.",
        "# TYPE latency_seconds histogram",
        'latency_seconds_bucket{le="0.1",service="db"} 1.0',
        'latency_seconds_bucket{le="1.0",service="db"} 3.0',
        'latency_seconds_bucket{le="+Inf",service="db"} 4.0',
        'latency_seconds_count{service="db"} 4.0',
        'latency_seconds_sum{service="db"} 4.05',
    ]


def test_same_name_returns_the_same_metric_but_not_another_type_labels_or_buckets():
    registry = Registry()
    first = registry.counter("a_total", "a", ["service"])
    assert registry.counter("a_total", "a", ["service"]) is first
    with pytest.raises(ValueError, match="already registered as counter"):
        registry.gauge("a_total", "a", ["service"])
    with pytest.raises(ValueError, match="already registered"):
        registry.counter("a_total", "a", ["rule"])
    registry.histogram("h", "h", buckets=[1.0])
    assert registry.histogram("h", "h", buckets=[1.0, float("inf")]) is registry.histogram("h", "h", buckets=[1])
    with pytest.raises(ValueError, match="other buckets"):
        registry.histogram("h", "h", buckets=[2.0])


def test_le_is_reserved_for_histogram_buckets():
    with pytest.raises(ValueError, match="Reserved label"):
        Registry().histogram("h_seconds", "x", ["le"])


def test_metrics_without_labels_are_zero_from_the_start():
    registry = Registry()
    registry.counter("alert_engine_events_received_total", "Events.")
    registry.gauge("alert_engine_outbox_depth", "Waiting.")
    registry.histogram("alert_engine_wait_seconds", "Wait.", buckets=[1.0])
    assert samples(registry) == {
        ("alert_engine_events_received_total", ()): 0,
        ("alert_engine_outbox_depth", ()): 0,
        ("alert_engine_wait_seconds_bucket", (("le", "1.0"),)): 0,
        ("alert_engine_wait_seconds_bucket", (("le", "+Inf"),)): 0,
        ("alert_engine_wait_seconds_count", ()): 0,
        ("alert_engine_wait_seconds_sum", ()): 0,
    }


def test_prime_gives_counters_and_histograms_of_that_label_a_zero_series_now_and_when_registered_later():
    registry = Registry()
    dead = registry.counter("alert_engine_notifications_dead_lettered_total", "Dead.", ["service"])
    dead.inc(service="db")
    registry.gauge("alert_engine_queue", "A gauge at 0 would say something: not primed.", ["service"])
    registry.counter("alert_engine_by_rule_total", "Another label: not primed.", ["rule"])
    registry.prime("service", ["db", "web"])
    registry.counter("alert_engine_notifications_sent_total", "Sent.", ["service"])  # after the prime
    registry.histogram("alert_engine_latency_seconds", "Latency.", ["service"], buckets=[1.0])
    registry.prime("service", ["web", "new"])  # a reload: series of a service gone stay with their counts
    got = samples(registry)
    assert {labels: value for (name, labels), value in got.items()
            if name == "alert_engine_notifications_dead_lettered_total"} == {
        (("service", "db"),): 1, (("service", "web"),): 0, (("service", "new"),): 0}
    assert {labels for (name, labels) in got if name == "alert_engine_notifications_sent_total"} == {
        (("service", "db"),), (("service", "web"),), (("service", "new"),)}
    assert got[("alert_engine_latency_seconds_count", (("service", "new"),))] == 0
    assert not any(name in ("alert_engine_queue", "alert_engine_by_rule_total") for name, _ in got)


def test_registries_are_independent_of_each_other_and_of_the_global_one():
    one, two = Registry(), Registry()
    one.counter("alert_engine_sent_total", "Sent.", ["service"]).inc(service="db")
    two.counter("alert_engine_sent_total", "Sent.", ["service"])
    assert ("alert_engine_sent_total", (("service", "db"),)) in samples(one)
    assert ("alert_engine_sent_total", (("service", "db"),)) not in samples(two)


def test_process_metrics_are_on_a_registry_that_asks_for_them():
    assert not any(name.startswith(("process_", "python_")) for name, _ in samples(Registry()))
    names = {name for name, _ in samples(Registry(process_metrics=True))}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
            "python_info"} <= names
    assert any(name.startswith("python_gc_") for name in names)


def test_no_created_series_and_the_latest_content_type():
    registry = Registry()
    registry.counter("a_total", "a").inc()
    registry.histogram("h_seconds", "h", buckets=[1.0]).observe(0.5)
    assert "_created" not in registry.render()
    assert CONTENT_TYPE == CONTENT_TYPE_LATEST
