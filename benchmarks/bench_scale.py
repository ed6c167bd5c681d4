"""Large images: throughput and peak memory per process, in memory vs chunked vs Dask workers,
Keras vs LiteRT int8.

    python benchmarks/bench_scale.py [--model M] [--sizes 1024 2048 4096 8192]
        [--modes memory chunked core1 workers1 workers2 litert] [--work DIR]

Each image is the bundled nuclei sample mirrored and repeated to ``N x N`` uint16 pixels,
stored as OME-Zarr (1024^2 chunks). Each mode runs in a fresh process; the parent samples the
resident memory of it and of every process it starts (Dask workers) every 0.1 s and reports
the largest. Modes:

- ``memory``: read the whole image, ``UNet.segment`` it, write a TIFF (what ``predict`` did);
  skipped above 8192^2.
- ``chunked``: ``segment_to_zarr`` in one process (``unet-tf predict M in.ome.zarr --out
  out.ome.zarr``); ``workers1`` / ``workers2``: the same on a local Dask cluster of 1 or 2
  worker processes sharing the cores (``--workers 1|2``; one worker gets all cores);
  ``core1``: one worker limited to one core, the unit a cluster of one-core workers adds;
  ``litert``: chunked, one process, the folder's int8 TFLite export (``--runtime litert``).

``--volumes 64x1024x1024 256x2048x2048`` runs the same for ``ZYX`` volumes with a 3-D net
(the bundled confocal volume mirrored and repeated, uint16 OME-Zarr with its voxel size;
``segment_volume_to_zarr``, 3-D labels joined across chunk faces; modes ``chunked``,
``core1``, ``workers1``, ``workers2``; default model: depth 3, 4 filters, trained here for
~20 s). The 1-Gvoxel case is ``256x2048x2048``.

Throughput is output megapixels (megavoxels) per second of the call (worker start-up included,
process start-up not). Prints ``RESULT`` lines: 2 workers over 1 worker and over 1 core, LiteRT int8
over Keras (chunked), and the foreground IoU of the LiteRT labels against Keras'. ``--model``:
a model folder (default: one trained here for ~2 min on the sample, depth 4, 16 filters).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODES = ("memory", "chunked", "core1", "workers1", "workers2", "litert")
IN_MEMORY_LIMIT = 8192


def make_image(path, size):
    import dask.array as da
    from unet_tf.omezarr import save_image
    from unet_tf.samples import load_sample
    image = load_sample()[0]
    tile = np.block([[image, image[:, ::-1]], [image[::-1], image[::-1, ::-1]]])
    reps = -(-size // tile.shape[0])
    big = da.tile(da.from_array(tile), (reps, reps))[:size, :size].rechunk(1024)
    save_image(path, big, chunk=1024)


def train_model(folder):
    from unet_tf import UNet
    from unet_tf.config import TrainConfig
    from unet_tf.io import write_image
    from unet_tf.samples import load_sample
    image, instances = load_sample()
    data = folder.parent / "train"
    write_image(data / "images" / "nuclei.tif", image)
    write_image(data / "masks" / "nuclei.tif", instances)
    config = TrainConfig(out=str(folder), images=str(data / "images"),
                         masks=str(data / "masks"), tile_size=188, depth=4, filters=16,
                         dropout=0.0, epochs=6, steps_per_epoch=50, batch_size=4,
                         optimizer="adam", learning_rate=1e-3, lr_schedule="cosine",
                         class_weights=None, val_split=0.0)
    UNet.train(config, verbose=0)


def make_volume(path, shape):
    import dask.array as da
    from unet_tf.omezarr import save_volume
    from unet_tf.samples import VOLUME_VOXEL_SIZE, load_sample_volume
    volume = load_sample_volume()[0]
    for axis in range(3):   # mirrored copies: no seams
        volume = np.concatenate([volume, np.flip(volume, axis)], axis=axis)
    reps = [-(-n // m) for n, m in zip(shape, volume.shape)]
    big = da.tile(da.from_array(volume, chunks=(64, 256, 256)), reps)
    save_volume(path, big[:shape[0], :shape[1], :shape[2]], voxel_size=VOLUME_VOXEL_SIZE)


def train_volume_model(folder):
    from unet_tf import UNet
    from unet_tf.config import TrainConfig
    from unet_tf.samples import VOLUME_VOXEL_SIZE, load_sample_volume
    volume, labels = load_sample_volume()
    config = TrainConfig(out=str(folder), voxel_size=list(VOLUME_VOXEL_SIZE),
                         tile_size=[44, 64, 64], depth=3, filters=4, dropout=0.0, epochs=4,
                         steps_per_epoch=15, optimizer="adam", learning_rate=3e-3, val_split=0.0,
                         seed=0)
    UNet.train(config, [volume], [labels], verbose=0)


def run_mode(mode, model, image, out):
    """Inside the child process: one mode, timed; prints a JSON line."""
    from unet_tf import chunked, cluster
    from unet_tf.volume_chunked import segment_volume_to_zarr
    start = time.perf_counter()
    if mode.startswith("volume-"):
        workers = {"core1": 1, "workers1": 1, "workers2": 2}.get(mode[7:])
        with cluster.dask_client(workers, threads=1 if mode == "volume-core1" else None) as (
                client, threads):
            objects = segment_volume_to_zarr(model, image, out, client=client,
                                             threads=threads)["objects"]
    elif mode == "memory":
        from unet_tf import UNet
        from unet_tf.io import write_image
        from unet_tf.omezarr import open_image
        lazy = open_image(image)
        labels = UNet.from_folder(model).segment(lazy.read(0, lazy.shape[0], 0, lazy.shape[1]))
        write_image(out, labels.astype(np.uint32))
        objects = int(labels.max())
    else:
        workers = {"core1": 1, "workers1": 1, "workers2": 2}.get(mode)
        with cluster.dask_client(workers, threads=1 if mode == "core1" else None) as (client,
                                                                                     threads):
            summary = chunked.segment_to_zarr(model, image, out, client=client, threads=threads,
                                              runtime="litert" if mode == "litert" else "keras")
        objects = summary["objects"]
    print(json.dumps({"seconds": time.perf_counter() - start, "objects": objects}))


def measure(mode, model, image, out):
    """Run one mode in a fresh process; ``(result, peak RSS of any one process in bytes)``."""
    import psutil
    child = subprocess.Popen([sys.executable, __file__, "--run", mode, "--model", str(model),
                              "--image", str(image), "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    watched, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            for process in [watched, *watched.children(recursive=True)]:
                peak = max(peak, process.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.1)
    lines = child.stdout.read().strip().splitlines()
    if child.returncode != 0 or not lines:
        raise RuntimeError(f"mode {mode} failed (exit {child.returncode})")
    return json.loads(lines[-1]), peak


def foreground_iou(a, b):
    import zarr
    a = zarr.open_group(str(a), mode="r")["labels/instances/0"]
    b = zarr.open_group(str(b), mode="r")["labels/instances/0"]
    both = either = 0
    for top in range(0, a.shape[0], 4096):
        x, y = a[top:top + 4096] > 0, b[top:top + 4096] > 0
        both, either = both + int((x & y).sum()), either + int((x | y).sum())
    return both / either if either else 1.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--volumes", nargs="+", metavar="ZxYxX", help="3-D runs instead, "
                        "e.g. 64x1024x1024 256x2048x2048 (modes chunked core1 workers1 workers2)")
    parser.add_argument("--work", help="folder for images and outputs (default: a temp dir)")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        return run_mode(args.run, args.model, args.image, args.out)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.volumes:
        return bench_volumes(args, work)
    model = Path(args.model) if args.model else work / "model"
    if not (model / "config.json").exists():
        print("training a model on the sample (~2 min) ...", flush=True)
        train_model(model)
    if "litert" in args.modes and not (model / "export" / "model_int8.tflite").exists():
        from unet_tf.exporters import export_model
        from unet_tf.samples import load_sample
        export_model(model, "tflite-int8", calibration_images=[load_sample()[0]])
    print(f"{'size':>7} {'mode':<9} {'seconds':>8} {'Mpx/s':>7} {'peak MB':>8} {'objects':>8}")
    for size in args.sizes:
        image = work / f"image_{size}.ome.zarr"
        if not image.exists():
            make_image(image, size)
        results = {}
        for mode in args.modes:
            if mode == "memory" and size > IN_MEMORY_LIMIT:
                continue
            out = work / f"out_{size}_{mode}.{'tif' if mode == 'memory' else 'ome.zarr'}"
            if out.is_dir():
                import shutil
                shutil.rmtree(out)
            out.unlink(missing_ok=True)
            result, peak = measure(mode, model, image, out)
            results[mode] = (result, out)
            rate = size * size / 1e6 / result["seconds"]
            print(f"{size:>7} {mode:<9} {result['seconds']:8.1f} {rate:7.2f} {peak / 2**20:8.0f} "
                  f"{result['objects']:>8}", flush=True)
        if "workers1" in results and "workers2" in results:
            one, two = results["workers1"][0]["seconds"], results["workers2"][0]["seconds"]
            print(f"RESULT workers {size}^2: ratio={one / two:.2f}x (baseline 1 worker "
                  f"{one:.1f} s, ours 2 workers {two:.1f} s)")
        if "core1" in results and "workers2" in results:
            one, two = results["core1"][0]["seconds"], results["workers2"][0]["seconds"]
            print(f"RESULT per-core {size}^2: ratio={one / two:.2f}x (baseline 1 worker on 1 "
                  f"core {one:.1f} s, ours 2 workers on 2 cores {two:.1f} s)")
        if "chunked" in results and "litert" in results:
            keras, lite = results["chunked"][0]["seconds"], results["litert"][0]["seconds"]
            iou = foreground_iou(results["chunked"][1], results["litert"][1])
            print(f"RESULT litert {size}^2: ratio={keras / lite:.2f}x (baseline Keras {keras:.1f} "
                  f"s, ours LiteRT int8 {lite:.1f} s), foreground IoU vs Keras {iou:.4f}")


def bench_volumes(args, work):
    """The 3-D runs: per volume shape, each mode's time, rate and peak memory per process."""
    import shutil
    model = Path(args.model) if args.model else work / "volume-model"
    if not (model / "config.json").exists():
        print("training a 3-D model on the volume sample (~20 s) ...", flush=True)
        train_volume_model(model)
    modes = [m for m in args.modes if m in ("chunked", "core1", "workers1", "workers2")]
    print(f"{'volume':>14} {'mode':<9} {'seconds':>8} {'Mvox/s':>7} {'peak MB':>8} {'objects':>8}")
    for text in args.volumes:
        shape = tuple(int(n) for n in text.lower().split("x"))
        image = work / f"volume_{text}.ome.zarr"
        if not image.exists():
            make_volume(image, shape)
        results = {}
        for mode in modes:
            out = work / f"out_{text}_{mode}.ome.zarr"
            shutil.rmtree(out, ignore_errors=True)
            result, peak = measure(f"volume-{mode}", model, image, out)
            results[mode] = result
            rate = np.prod(shape) / 1e6 / result["seconds"]
            print(f"{text:>14} {mode:<9} {result['seconds']:8.1f} {rate:7.2f} "
                  f"{peak / 2**20:8.0f} {result['objects']:>8}", flush=True)
        for baseline, name in (("workers1", "1 worker"), ("core1", "1 worker on 1 core")):
            if baseline in results and "workers2" in results:
                one, two = results[baseline]["seconds"], results["workers2"]["seconds"]
                print(f"RESULT volume {baseline} {text}: ratio={one / two:.2f}x (baseline "
                      f"{name} {one:.1f} s, ours 2 workers {two:.1f} s)")


if __name__ == "__main__":
    main()
