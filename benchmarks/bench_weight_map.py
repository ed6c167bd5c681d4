"""Weight map: windowed exact distances vs the brute force (one full distance transform per cell),
on 2-D masks and on an anisotropic ZYX volume (issue 30 asks for >= 20x there).

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


def random_balls(shape=(48, 192, 192), spacing=(1.0, 0.25, 0.25), cells=60, seed=0):
    """``cells`` random balls (radius 2-4 um) painted in turn on a grid of voxel size
    ``spacing`` (um): nuclei in a confocal stack with 4x coarser z."""
    rng = np.random.default_rng(seed)
    axes = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij",
                       sparse=True)
    mask = np.zeros(shape, np.int32)
    for label in range(1, cells + 1):
        centre = rng.uniform(0, 1, 3) * np.array(shape) * spacing
        radius = rng.uniform(2.0, 4.0)
        mask[sum((a - c) ** 2 for a, c in zip(axes, centre)) <= radius ** 2] = label
    return mask


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    repeat = 1 if parser.parse_args().quick else 3
    volume = (1.0, 0.25, 0.25)
    cases = {"random 512x512, 150 cells": (random_cells(), {}),
             "DSB2018 sample, 125 nuclei": (load_sample()[1], {}),
             "random 48x192x192 at 1x0.25x0.25 um, 60 balls": (
                 random_balls(spacing=volume), {"spacing": volume, "sigma": 1.25})}
    for name, (mask, options) in cases.items():
        cells = len(np.unique(mask)) - 1
        diff = np.abs(weight_map(mask, **options) - weight_map_reference(mask, **options)).max()
        base = best_time(lambda: weight_map_reference(mask, **options), repeat)
        ours = best_time(lambda: weight_map(mask, **options), 3 * repeat)
        print(f"{name} ({cells} distinct cells): max |diff| vs brute force = {diff:.2e}")
        report(f"weight_map {name}", "brute force", base, ours)


if __name__ == "__main__":
    main()
