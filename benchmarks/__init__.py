"""Benchmarks of ftsam (not timed tests): ``python -m benchmarks.run`` (or ``make bench``) runs
them all and writes BENCHMARKS.md. Each module measures one thing and returns a
:class:`benchmarks.common.Section`; see BENCHMARKS.md for what each one checks and why."""
