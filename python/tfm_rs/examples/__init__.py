"""Runnable examples (``python -m tfm_rs.examples.NAME``)."""
