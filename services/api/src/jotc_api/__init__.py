"""JOTC API: solves Jumping on the Clouds over HTTP and records every request durably."""

__version__ = "1.0.0"
