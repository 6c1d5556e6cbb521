"""Benchmarks of tuf-exporter (issue #10): ``python -m bench``.

Cost per probe (unchanged and changed repositories), delegation sweeps, many endpoints under
the real service, scrape rendering and event shipping, each as a median and as a ratio against
a baseline measured in the same run (a bare python-tuf client, raw parsing and verification,
plain prometheus_client gauges, raw SQLite). Not part of the test suite.
"""
