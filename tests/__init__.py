"""alert-engine tests: one module per engine module, e2e/ for the daemon as a subprocess."""
