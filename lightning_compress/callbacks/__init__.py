"""Thin Lightning integration: each callback reads a schedule, calls ``core``, and logs."""
