"""End-to-end: the daemon as a real subprocess, a real local PagerDuty stand-in, real signals."""
