"""Benchmarks and probes of the attention kernels (kernels/), run on a CUDA GPU.

benchmark.py is the benchmark whose result README cites (bench/results/kernels_h100.md); timing.py holds its inputs
and timers; fixed_costs.py, stream_probe.py and ws_probe.py are the probes bench/EXPERIMENTS.md draws on;
decode_ab.py times two versions of the decode kernels against each other; profile_launches.py gives a profiler
launches to read; gpu_check.sh runs the kernel tests and the benchmark in one call.
"""
