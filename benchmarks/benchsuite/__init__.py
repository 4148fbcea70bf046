"""The benchmark of benchmarks/bench.py, split by stage: common, tree, server, tool,
peers, measure, profiling, run, report, cli."""
