"""Measurements, each run from the repository's root as a module (``python -m benchmarks.<name>``, or the
Makefile's targets): accuracy (``accuracy``), the shortlist cascade (``cascade``), pair throughput
(``pair_throughput``) and the Ray backend's scaling (``ray_scaling``). Their figures and history are in
benchmarks/RESULTS.md."""
