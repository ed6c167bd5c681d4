"""Scaling: predict_tiled time vs image size, and weight-map time vs number of cells.

predict_tiled should be linear in pixels (time per megapixel flat from 512^2 to 8192^2); the
weight map should be ~linear in pixels, not cells x pixels (time per cell falling, or flat, as
cells grow at a fixed image size, where the naive method grows with cells x pixels).

    python benchmarks/bench_scaling.py            # 512 .. 8192, 50 .. 800 cells
    python benchmarks/bench_scaling.py --quick    # 512 .. 2048, 50 .. 400 cells
"""

import argparse

import numpy as np

from _timing import best_time
from bench_weight_map import random_cells
from unet_tf import build_unet, weight_map
from unet_tf.samples import load_sample
from unet_tf.tiling import predict_tiled, tile_count


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    quick = parser.parse_args().quick
    sizes = (512, 1024, 2048) if quick else (512, 1024, 2048, 4096, 8192)
    model = build_unet(depth=5, filters=8)   # narrow: the question is the tiling overhead
    sample = load_sample()[0]
    predict_tiled(model, sample, tile_size=572)  # trace
    print("predict_tiled, depth 5, 8 filters, tile 572, batch 4:")
    per_mpx = []
    for size in sizes:
        image = np.tile(sample, (size // 512, size // 512))
        seconds = best_time(lambda: predict_tiled(model, image, tile_size=572), 1 if size > 2048 else 2)
        per_mpx.append(seconds / (size * size / 1e6))
        print(f"  {size:5d}^2: {seconds:7.2f} s, {tile_count(image.shape, 572):4d} tiles, "
              f"{per_mpx[-1]:.3f} s/Mpx")
    print(f"RESULT predict_tiled linearity: ratio={per_mpx[-1] / per_mpx[0]:.2f}x "
          f"(s/Mpx at {sizes[-1]}^2 over s/Mpx at {sizes[0]}^2; 1.0 = linear)")

    counts = (50, 100, 200, 400) if quick else (50, 100, 200, 400, 800)
    print("weight map of a 1024x1024 label image:")
    per_cell = []
    for n in counts:
        labels = random_cells(1024, n, seed=n)
        seconds = best_time(lambda: weight_map(labels), 3)
        per_cell.append(seconds / n)
        print(f"  {n:4d} cells: {seconds * 1000:7.1f} ms ({per_cell[-1] * 1e3:.3f} ms/cell)")
    growth = (per_cell[-1] * counts[-1]) / (per_cell[0] * counts[0])
    print(f"RESULT weight map vs cells: ratio={growth:.2f}x time for {counts[-1] // counts[0]}x "
          f"the cells (cells x pixels would give {counts[-1] // counts[0]}x)")


if __name__ == "__main__":
    main()
