import math

import pytest

from engine.metrics import Registry, format_value


def test_counter_renders_help_type_and_labelled_series_sorted():
    registry = Registry()
    sent = registry.counter("alert_engine_sent_total", "Notifications sent.", ["service"])
    sent.labels(service="web").inc()
    sent.labels(service="db").inc(2)
    sent.inc(service="db")
    assert sent.get(service="db") == 3
    assert registry.render() == (
        "# HELP alert_engine_sent_total Notifications sent.\n"
        "# TYPE alert_engine_sent_total counter\n"
        'alert_engine_sent_total{service="db"} 3\n'
        'alert_engine_sent_total{service="web"} 1\n'
    )


def test_label_values_and_help_are_escaped():
    registry = Registry()
    counter = registry.counter("x_total", "a \\ back\nslash", ["rule"])
    counter.labels(rule='say "hi"\\now\n').inc()
    text = registry.render()
    assert "# HELP x_total a \\\\ back\\nslash\n" in text
    assert 'x_total{rule="say \\"hi\\"\\\\now\\n"} 1\n' in text


def test_counter_refuses_to_go_down_and_wrong_labels():
    counter = Registry().counter("c_total", "c", ["service"])
    with pytest.raises(ValueError, match="cannot decrease"):
        counter.inc(-1, service="a")
    with pytest.raises(ValueError, match="labels"):
        counter.inc(rule="a")
    with pytest.raises(ValueError, match="labels"):
        counter.labels()


def test_gauge_set_inc_dec_and_callback_read_at_render():
    registry = Registry()
    depth = registry.gauge("outbox_depth", "Notifications waiting.")
    depth.set(5)
    depth.inc()
    depth.dec(2)
    assert depth.get() == 4
    reloads = registry.gauge("rules_loaded", "Rules loaded.", ["file"])
    value = {"n": 1}
    reloads.labels(file="a.yaml").set_function(lambda: value["n"])
    value["n"] = 7
    text = registry.render()
    assert "outbox_depth 4\n" in text
    assert 'rules_loaded{file="a.yaml"} 7\n' in text
    assert "# TYPE outbox_depth gauge\n" in text


def test_histogram_buckets_are_cumulative_with_sum_count_and_inf():
    registry = Registry()
    latency = registry.histogram("latency_seconds", "Latency.", ["service"], buckets=[0.1, 1.0])
    for value in (0.05, 0.5, 0.5, 3.0):
        latency.labels(service="db").observe(value)
    assert latency.count(service="db") == 4
    lines = registry.render().splitlines()
    assert lines == [
        "# HELP latency_seconds Latency.",
        "# TYPE latency_seconds histogram",
        'latency_seconds_bucket{service="db",le="0.1"} 1',
        'latency_seconds_bucket{service="db",le="1"} 3',
        'latency_seconds_bucket{service="db",le="+Inf"} 4',
        'latency_seconds_sum{service="db"} 4.05',
        'latency_seconds_count{service="db"} 4',
    ]


def test_same_name_returns_the_same_metric_but_not_another_type_or_labels():
    registry = Registry()
    first = registry.counter("a_total", "a", ["service"])
    assert registry.counter("a_total", "a", ["service"]) is first
    with pytest.raises(ValueError, match="already registered"):
        registry.gauge("a_total", "a", ["service"])
    with pytest.raises(ValueError, match="already registered"):
        registry.counter("a_total", "a", ["rule"])
    registry.histogram("h", "h", buckets=[1.0])
    with pytest.raises(ValueError, match="other buckets"):
        registry.histogram("h", "h", buckets=[2.0])


def test_invalid_names_are_refused():
    registry = Registry()
    with pytest.raises(ValueError, match="invalid metric name"):
        registry.counter("1abc", "x")
    with pytest.raises(ValueError, match="invalid label name"):
        registry.counter("ok_total", "x", ["bad-label"])
    with pytest.raises(ValueError, match="reserved"):
        registry.histogram("h2", "x", ["le"])


def test_metrics_render_sorted_by_name():
    registry = Registry()
    registry.counter("zeta_total", "z").inc()
    registry.counter("alpha_total", "a").inc()
    text = registry.render()
    assert text.index("alpha_total") < text.index("zeta_total")


def test_format_value():
    assert format_value(3.0) == "3"
    assert format_value(0.25) == "0.25"
    assert format_value(math.inf) == "+Inf"
    assert format_value(-math.inf) == "-Inf"
    assert format_value(math.nan) == "NaN"
