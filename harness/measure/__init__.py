"""Measurement: latency loops and statistics, GPU telemetry, provenance."""
