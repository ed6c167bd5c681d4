"""Train step of the paper U-Net (572x572 tile): ours vs a peer Keras U-Net, and what moves it.

Peer: `keras-unet`'s `vanilla_unet` (the same 31,030,658-parameter valid-conv net; install it for
the benchmark only: `pip install --no-deps keras-unet matplotlib`). Both get SGD with momentum,
random tiles, the same batch; ours with its weighted pixel loss, the peer with its own sigmoid
output and binary cross-entropy. Prints seconds per step, the ratio, and GFLOP/s against the
machine's fp32 rate: nominal (cores x clock x FLOP/cycle; --peak-gflops overrides) and measured
(a 4096^2 float32 matmul, the better yardstick on a CPU that boosts).

    python benchmarks/bench_train_step.py            # batch 1 and 2, all variants
    python benchmarks/bench_train_step.py --quick    # batch 1, fewer repeats
"""

import argparse
import os
import re
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

from _timing import best_time, report
from unet_tf import build_unet
from unet_tf.losses import weighted_pixel_loss


def conv_flops(model):
    """Forward FLOPs (2 per multiply-add) of the convolutions of ``model`` for one tile."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            k = np.prod(layer.kernel.shape)            # kh * kw * cin * cout
            if isinstance(layer, keras.layers.Conv2DTranspose):
                positions = np.prod(layer.input.shape[1:3])
            else:
                positions = np.prod(layer.output.shape[1:3])
            total += 2 * k * positions
    return int(total)


def peak_gflops():
    """Nominal fp32 peak: cores x clock x FLOP/cycle (64 with AVX-512's two 512-bit FMA pipes,
    32 with AVX2 FMA). The clock read here is the base clock, so this understates a boosting
    CPU; the measured matmul rate (printed beside it) is the better yardstick."""
    cpuinfo = open("/proc/cpuinfo").read()
    cores = len(os.sched_getaffinity(0))
    try:
        ghz = int(open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read()) / 1e6
    except OSError:
        ghz = max(float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", cpuinfo)) / 1e3
    per_cycle = 64 if "avx512f" in cpuinfo else 32
    return cores * ghz * per_cycle, cores, ghz, per_cycle


def matmul_gflops(n=4096, repeat=3):
    """Measured fp32 rate of a large matrix multiply: what this machine really sustains."""
    a = tf.random.normal((n, n))
    matmul = tf.function(lambda: tf.matmul(a, a))
    matmul()
    return 2 * n ** 3 / best_time(lambda: matmul().numpy(), repeat) / 1e9


def step_time(model, loss, batch, jit, repeat, steps_per_execution=1, weighted=True):
    """Seconds per train step on one repeated random batch (weighted: ours, (x, y, w))."""
    model.compile(keras.optimizers.SGD(1e-3, momentum=0.99), loss, jit_compile=jit,
                  steps_per_execution=steps_per_execution)
    size, out = model.input_shape[1], model.output_shape[1]
    rng = np.random.default_rng(0)
    x = rng.random((batch, size, size, 1), np.float32)
    y = (rng.random((batch, out, out)) > 0.5).astype(np.int32)
    if weighted:
        batch_data = (x, y, np.ones((batch, out, out), np.float32))
    else:  # the peer: sigmoid outputs against one-hot targets
        batch_data = (x, keras.utils.to_categorical(y, 2))
    data = tf.data.Dataset.from_tensors(batch_data).repeat()
    n = steps_per_execution
    model.fit(data, steps_per_epoch=n, epochs=1, verbose=0)  # trace and warm up
    return best_time(lambda: model.fit(data, steps_per_epoch=n, epochs=1, verbose=0),
                     repeat) / n


VARIANTS = {  # name -> (jit_compile, steps_per_execution)
    "default": (False, 1), "xla": (True, 1), "steps_per_execution=4": (False, 4)}


def measure(name, batch, repeat):
    """Seconds per step of one configuration (run in its own process, see main)."""
    keras.utils.set_random_seed(0)
    if name == "peer":
        from keras_unet.models import vanilla_unet
        return step_time(vanilla_unet(input_shape=(572, 572, 1), num_classes=2),
                         keras.losses.BinaryCrossentropy(), batch, False, repeat, weighted=False)
    jit, steps = VARIANTS[name]
    return step_time(build_unet((572, 572, 1)), weighted_pixel_loss(), batch, jit, repeat, steps)


def best_of_processes(name, batch, repeat, processes):
    """Best time over fresh processes: on these machines one process sometimes runs the same
    graph ~1.8x slower throughout (seen: 2.8 s vs 5.1 s per step), so one process is no sample."""
    times = []
    for _ in range(processes):
        result = subprocess.run([sys.executable, __file__, "--measure", name, "--batch",
                                 str(batch), "--repeat", str(repeat)], capture_output=True,
                                text=True, check=True)
        times.append(float(result.stdout.strip().splitlines()[-1]))
    return min(times), times


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="batch 1, default variant only")
    parser.add_argument("--peak-gflops", type=float, help="the machine's fp32 peak")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure == "matmul":
        print(matmul_gflops())
        return
    if args.measure:
        print(measure(args.measure, args.batch, args.repeat))
        return
    processes = 2 if args.quick else 3
    peak, cores, ghz, per_cycle = peak_gflops()
    peak = args.peak_gflops or peak
    flops = 3 * conv_flops(build_unet((572, 572, 1)))  # forward + backward (two convs' worth)
    sustained, _ = best_of_processes("matmul", 1, 1, processes)
    print(f"paper net, 572 tile: {flops / 1e9:.0f} GFLOP per tile and train step (direct "
          f"convolution count); nominal fp32 peak {peak:.0f} GFLOP/s ({cores} cores x {ghz:.2f} GHz"
          f" x {per_cycle}),"
          f" 4096^2 matmul sustains {sustained:.0f} GFLOP/s")
    for batch in ((1,) if args.quick else (1, 2)):
        peer_s, peer_all = best_of_processes("peer", batch, 2, processes)
        times = {}
        for name in (("default",) if args.quick else VARIANTS):
            times[name], all_times = best_of_processes(name, batch, 2, processes)
            print(f"  batch {batch} {name}: {', '.join(f'{t:.2f}' for t in all_times)} s/step")
        print(f"  batch {batch} peer: {', '.join(f'{t:.2f}' for t in peer_all)} s/step")
        for name, seconds in times.items():
            rate = flops * batch / seconds / 1e9
            print(f"batch {batch}, {name}: {seconds:.2f} s/step, {rate:.0f} GFLOP/s "
                  f"({100 * rate / peak:.0f}% of nominal peak, {100 * rate / sustained:.0f}% "
                  "of the matmul rate)")
        report(f"train step batch {batch} vs keras-unet vanilla_unet", "keras-unet", peer_s,
               times["default"], unit="s")
        for name, seconds in times.items():
            if name != "default":
                report(f"train step batch {batch}, {name} vs default", "default",
                       times["default"], seconds, unit="s")


if __name__ == "__main__":
    main()
