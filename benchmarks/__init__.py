"""`make bench`: the performance targets, measured in one run (see ingest.py)."""
