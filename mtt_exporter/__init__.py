"""Prometheus exporter for MTT call-progress notifications."""

__version__ = "0.1.0"
