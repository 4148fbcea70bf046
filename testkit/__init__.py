"""Helpers shared by the tests and the benchmarks (not part of the installed tool).

``classify``: the one S3 request classifier; ``proxy``: the one loopback S3
proxy (counting, delays, faults, bandwidth cap); ``servers``: ``free_port`` and
the SeaweedFS starter. Importable from a fresh clone: pytest puts the
repository root on ``sys.path`` (tests/ is a package), the benchmark scripts
insert it themselves.
"""
