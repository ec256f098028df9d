"""Logs (JSON lines, redaction) and Prometheus metrics.

May import domain only.
"""
