"""`make bench`: the performance targets of issue 5, measured in one run (see ingest.py)."""
