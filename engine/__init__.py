"""alert-engine: events in, matched against YAML rules, paged out to PagerDuty services."""

__version__ = "0.1.0"
