"""Bus tests: each runs on the embedded bus and on a real Redis."""
