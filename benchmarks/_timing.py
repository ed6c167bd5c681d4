"""Shared by the benchmark scripts: best-of-N timing and the RESULT line format."""

import time


def best_time(fn, repeat=5):
    """Fastest of ``repeat`` calls, in seconds (the least disturbed by a noisy machine)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def report(name, baseline_name, baseline_s, ours_s, unit="ms"):
    scale = 1000.0 if unit == "ms" else 1.0
    print(f"RESULT {name}: ratio={baseline_s / ours_s:.1f}x "
          f"(baseline {baseline_name} {baseline_s * scale:.1f} {unit}, ours {ours_s * scale:.1f} {unit})")
