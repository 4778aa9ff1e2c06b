"""Pipeline stages (`python -m stages.<name>`) and the small modules they share."""

import os

# Before any stage module loads torch: its OpenMP runtime reads the wait policy once, when it loads. Threads
# that spin between parallel regions (OpenMP's default) steal the cores of whatever else runs on the machine:
# two torch processes side by side ran 4.7x slower spinning than waiting passively (benchmarks/omp_wait.py).
# A policy the user set is kept. No result depends on it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
