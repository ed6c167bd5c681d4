"""Volumes on this machine: does the 3-D input pipeline keep the training step fed, and what does
3-D overlap-tile prediction cost over one pass?

    python benchmarks/bench_volume_pipeline.py [--quick]

Data: the bundled confocal nuclei volume (40 x 128 x 256, 0.29 x 0.26 x 0.26 um), with the
volume planner's net and tile for it (depth 3, 16 filters on a CPU).

- Pipeline: training samples per second of ``make_volume_dataset`` (3-D augmentation, the
  anisotropic weight map, half the tiles centred on objects, tf.data's parallel calls) against
  training steps per second of the planned net and tile (batch 1): a ratio above 1 is room.
- Tiling: :func:`unet_tf.volume_tiling.predict_volume_tiled` with tiles half the volume's
  extent along Y and X (4 tiles) against the compiled model run on the same tiles cut up front
  (the machinery's overhead: cutting, mirroring, normalising, pasting), and against one tile
  covering the whole volume (what the overlap costs), best of 3 each; the results agree to
  float rounding (printed).
"""

import argparse
import os
import time

import numpy as np

from _timing import best_time
from unet_tf.backend import tf
from unet_tf.memory import volume_tile_shape
from unet_tf.model import build_unet_3d
from unet_tf.overlap_tile import (apply_range, crop_reflect_nd, normalization_range,
                                  window_grid_nd)
from unet_tf.samples import VOLUME_VOXEL_SIZE, load_sample_volume
from unet_tf.volume_data import make_volume_dataset
from unet_tf.volume_planner import make_volume_plan, time_volume_step
from unet_tf.volume_sizes import axis_periods, next_valid_volume_shape, volume_output_shape
from unet_tf.volume_tiling import predict_volume_tiled, volume_forward


def samples_per_second(config, volume, labels, samples):
    data = make_volume_dataset([volume], [labels], config.tile_size, config.volume_plan,
                               config.voxel_size, seed=0, foreground_tiles=0.5,
                               num_parallel_calls=tf.data.AUTOTUNE)
    iterator = iter(data)
    for _ in range(3):
        next(iterator)
    start = time.perf_counter()
    for _ in range(samples):
        next(iterator)
    rate = samples / (time.perf_counter() - start)
    del iterator
    return rate


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and repeats")
    quick = parser.parse_args().quick
    volume, labels = load_sample_volume()
    plan = make_volume_plan([volume], [labels], VOLUME_VOXEL_SIZE, overrides={"epochs": 1})
    config = plan.config()
    print(f"cores: {os.cpu_count()}; planned tile {config.tile_size}, depth {config.depth}, "
          f"{config.filters} filters")
    samples = samples_per_second(config, volume, labels, 10 if quick else 40)
    steps = 1.0 / time_volume_step(config, 1, steps=3 if quick else 8)
    print(f"RESULT 3-D pipeline feeds the training step: ratio={samples / steps:.2f}x "
          f"(baseline training {steps:.2f} steps/s, ours pipeline {samples:.2f} samples/s)")

    axes = config.volume_plan
    model = build_unet_3d((None, None, None, 1), 2, axes, config.filters)
    whole = volume_tile_shape(volume.shape, axes, config.filters, budget=2 ** 40)
    out = volume_output_shape(whole, axes)
    half = next_valid_volume_shape([whole[0]] + [w - o // 2 for w, o in zip(whole[1:], out[1:])],
                                   axes)
    one = predict_volume_tiled(model, volume, axes, config.normalization, whole)
    tiled = predict_volume_tiled(model, volume, axes, config.normalization, half)
    repeat = 1 if quick else 3
    t_one = best_time(lambda: predict_volume_tiled(model, volume, axes, config.normalization,
                                                   whole), repeat)
    t_tiled = best_time(lambda: predict_volume_tiled(model, volume, axes, config.normalization,
                                                     half), repeat)
    print(f"tiles {half} against one {whole}: max difference {np.abs(one - tiled).max():.2e}")
    tiles = cut_tiles(volume, axes, half, config.normalization)
    forward = volume_forward(model)
    t_raw = best_time(lambda: [forward(tile[None]) for tile in tiles], repeat)
    print(f"RESULT 3-D overlap-tile overhead: ratio={t_tiled / t_raw:.2f}x (baseline the "
          f"compiled model on the same {len(tiles)} tiles, one a call as ours {t_raw:.2f} s, ours "
          f"predict_volume_tiled {t_tiled:.2f} s)")
    print(f"RESULT 3-D tiles of half the extent against one pass: ratio={t_tiled / t_one:.2f}x "
          f"(baseline one tile {t_one:.2f} s, ours {len(tiles)} tiles {t_tiled:.2f} s; the "
          "overlap they recompute, not overhead)")


def cut_tiles(volume, plan, tile, normalization):
    """The normalised input tiles :func:`predict_volume_tiled` feeds the net, cut up front."""
    out = volume_output_shape(tile, plan)
    margins = [(t - o) // 2 for t, o in zip(tile, out)]
    _, corners = window_grid_nd(volume.shape[:3], out, axis_periods(plan))
    lo, hi = normalization_range(volume, normalization)
    return np.stack([apply_range(crop_reflect_nd(volume[..., None], [c - m for c, m in
                                                                     zip(corner, margins)], tile),
                                 lo, hi) for corner in corners])


if __name__ == "__main__":
    main()
