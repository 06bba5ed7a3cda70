"""Where events come from: request bodies (JSON, JSON arrays, NDJSON) and Sentry webhooks."""
