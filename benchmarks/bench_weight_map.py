"""Weight map: windowed exact distances vs the brute force (one full distance transform per cell).

    python benchmarks/bench_weight_map.py [--quick]
"""

import argparse

import numpy as np

from _timing import best_time, report
from unet_tf.samples import load_sample
from unet_tf.weightmaps import weight_map, weight_map_reference


def random_cells(size=512, cells=150, seed=0):
    """``cells`` random disks (radius 6-14 px) painted in turn: many touch or overlap."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    mask = np.zeros((size, size), np.int32)
    for label in range(1, cells + 1):
        y, x, r = rng.integers(0, size), rng.integers(0, size), rng.integers(6, 15)
        mask[(rows - y) ** 2 + (cols - x) ** 2 <= r * r] = label
    return mask


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    repeat = 1 if parser.parse_args().quick else 3
    cases = {"random 512x512, 150 cells": random_cells(), "DSB2018 sample, 125 nuclei": load_sample()[1]}
    for name, mask in cases.items():
        cells = len(np.unique(mask)) - 1
        diff = np.abs(weight_map(mask) - weight_map_reference(mask)).max()
        base = best_time(lambda: weight_map_reference(mask), repeat)
        ours = best_time(lambda: weight_map(mask), 3 * repeat)
        print(f"{name} ({cells} distinct cells): max |diff| vs brute force = {diff:.2e}")
        report(f"weight_map {name}", "brute force", base, ours)


if __name__ == "__main__":
    main()
