"""Input pipeline throughput at 572x572 with augmentation and weight maps on this machine.

Baseline: the same per-sample work run serially in Python (num_parallel_calls=1), so the ratio
shows what tf.data's parallel calls gain on these cores. A second line: half of the tiles centred
on a random object (``foreground_tiles=0.5``, what the planner chooses for sparse objects)
against uniform tiles, both parallel.

    python benchmarks/bench_pipeline.py [--quick]
"""

import argparse
import os
import time

import tensorflow as tf

from unet_tf.data import make_dataset
from unet_tf.samples import load_sample


def samples_per_second(parallel, samples, foreground_tiles=0.0):
    image, instances = load_sample()
    dataset = make_dataset([image], [instances], tile_size=572, seed=0, num_parallel_calls=parallel,
                           foreground_tiles=foreground_tiles)
    iterator = iter(dataset)
    for _ in range(5):  # warm up: tracing, thread pools
        next(iterator)
    start = time.perf_counter()
    for _ in range(samples):
        next(iterator)
    return samples / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    samples = 40 if parser.parse_args().quick else 200
    serial = samples_per_second(1, samples)
    parallel = samples_per_second(tf.data.AUTOTUNE, samples)
    print(f"cores: {os.cpu_count()}")
    print(f"RESULT pipeline 572x572 augment+weight maps: ratio={parallel / serial:.2f}x "
          f"(baseline serial {serial:.1f} samples/s, ours AUTOTUNE {parallel:.1f} samples/s)")
    centred = samples_per_second(tf.data.AUTOTUNE, samples, foreground_tiles=0.5)
    print(f"RESULT pipeline 572x572 half the tiles centred on objects: "
          f"ratio={centred / parallel:.2f}x (baseline uniform {parallel:.1f} samples/s, "
          f"ours {centred:.1f} samples/s)")


if __name__ == "__main__":
    main()
