"""Overlap-tile prediction of a 2048x2048 image vs the raw batched model on the same tiles.

The baseline runs the model's forward pass alone on pre-cut, pre-normalised tiles (the same
number of output pixels, the same batch size); ours adds everything predict_tiled does: lazy
mirror-padded cutting, normalisation, softmax and writing the output. Goal: ratio <= 1.10.

    python benchmarks/bench_tiling.py [--quick]
"""

import argparse

import numpy as np

from _timing import best_time
from unet_tf import build_unet
from unet_tf.samples import load_sample
from unet_tf.tiling import forward, predict_tiled, tile_count


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1024x1024 instead of 2048x2048")
    quick = parser.parse_args().quick
    size, tile, batch = (1024 if quick else 2048), 572, 4
    model = build_unet(depth=5, filters=16)
    sample = load_sample()[0]
    image = np.tile(sample, (size // 512, size // 512))
    n_tiles = tile_count((size, size), tile)
    tiles = np.random.default_rng(0).normal(size=(n_tiles, tile, tile, 1)).astype(np.float32)

    def raw():
        for start in range(0, n_tiles, batch):
            np.asarray(forward(model)(tiles[start:start + batch]))

    raw(), predict_tiled(model, image, tile_size=tile, batch_size=batch)  # warm up, trace
    base = best_time(raw, 2 if quick else 3)
    ours = best_time(lambda: predict_tiled(model, image, tile_size=tile, batch_size=batch),
                     2 if quick else 3)
    megapixels = size * size / 1e6
    print(f"{size}x{size} image, {n_tiles} tiles of {tile}, batch {batch}, depth 5, 16 filters")
    print(f"RESULT predict_tiled overhead: ratio={ours / base:.3f}x (baseline raw model "
          f"{base:.2f} s = {megapixels / base:.2f} Mpx/s, ours {ours:.2f} s = "
          f"{megapixels / ours:.2f} Mpx/s; lower is better, goal <= 1.10)")


if __name__ == "__main__":
    main()
