"""engine/table.py: the CLI's plain-text tables."""

from engine.table import table


def test_columns_are_as_wide_as_their_widest_cell_and_the_last_is_not_padded():
    lines = table(("ID", "SERVICE", "REASON"), [(7, "sre", "PagerDuty rejected it: HTTP 400"),
                                                (1234, "payments", None)])
    assert lines == ["ID    SERVICE   REASON",
                     "7     sre       PagerDuty rejected it: HTTP 400",
                     "1234  payments  -"]


def test_a_cell_with_line_breaks_stays_on_its_line():
    assert table(("A", "B"), [("x\ny", "z")]) == ["A    B", "x y  z"]
