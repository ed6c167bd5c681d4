"""Will a tile fit in memory? An estimate made before any allocation.

A valid-conv U-Net keeps every feature map of a tile for backprop, so memory grows with
tile size squared and batch; a tile size that does not fit would otherwise fail minutes into a
run with an allocator error deep inside TensorFlow. The estimate counts the float32 outputs of
every layer (exact for the forward pass), times a factor for training (their gradients and the
framework's temporaries), and compares with the memory the OS says is available.
"""

import functools

import numpy as np

TRAINING_FACTOR = 3.0   # activations + their gradients + temporaries
GIB = 2 ** 30
# Most a batch of prediction tiles takes. Measured (bench_scale.py, 4096^2, depth 4, 16 filters,
# 2 cores): 2 GiB instead of 512 MiB gained <= 5 % (noise level here) and cost 400-600 MB more.
INFERENCE_MEMORY = GIB // 2
DEVICE_MEMORY = 256 * 2 ** 20     # what a TFLite export's tile may take on an edge device
BATCH_SIZE = 4   # tiles per forward pass: on 2-8 CPU cores larger batches gain < 10 %


@functools.lru_cache(maxsize=32)
def activation_bytes(tile_size, depth=5, filters=64, upsampling="transpose", channels=1,
                     num_classes=2):
    """Bytes of all layer outputs (float32) for one ``tile_size`` tile."""
    from .model import build_unet
    model = build_unet((tile_size, tile_size, channels), num_classes, depth, filters, 0.0,
                       upsampling)
    return 4 * sum(int(np.prod(layer.output.shape[1:])) for layer in model.layers)


@functools.lru_cache(maxsize=32)
def _activation_polynomial(depth, filters, upsampling, channels, num_classes):
    from .sizes import size_rule
    smallest, step, _ = size_rule(depth, upsampling)
    counts = [activation_bytes(smallest + k * step, depth, filters, upsampling, channels,
                               num_classes) for k in (0, 1, 2)]
    return np.polyfit([0, 1, 2], counts, 2)


def tile_bytes(tile_size, depth=5, filters=64, upsampling="transpose", channels=1,
               num_classes=2):
    """:func:`activation_bytes` for any valid tile from three built models: every layer's size
    is affine in ``k`` for tiles ``smallest + k*step``, so the total is exactly quadratic."""
    from .sizes import check_input_size, size_rule
    check_input_size(tile_size, depth, upsampling)
    smallest, step, _ = size_rule(depth, upsampling)
    k = (tile_size - smallest) // step
    return float(np.polyval(_activation_polynomial(depth, filters, upsampling, channels,
                                                   num_classes), k))


def available_bytes():
    """Memory available to this process (Linux ``MemAvailable``), or ``None`` if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def inference_budget():
    """Bytes a batch of prediction tiles may take in one process (each Dask worker too): a
    quarter of the available memory, at most ``INFERENCE_MEMORY``."""
    available = available_bytes()
    return min(INFERENCE_MEMORY, available // 4) if available else INFERENCE_MEMORY // 2


def inference_tile_size(image_shape, depth=5, upsampling="transpose", filters=64, channels=1,
                        num_classes=2, batch_size=1, budget=None):
    """The one tile policy of prediction, when no tile is given: as few tiles as fit
    ``budget`` bytes a batch (default :func:`inference_budget`), each just large enough to
    cover the image evenly (a 1152 px side gets 2 tiles of 576 px output, not 3 of 420) and no
    larger than the image needs. Any valid tile gives the same result; larger ones waste less
    on overlap. The training tile plays no part."""
    from .sizes import input_size_for_output, output_size, size_rule
    budget = budget or inference_budget()
    side = max(image_shape[:2])
    needed = input_size_for_output(side, depth, upsampling)
    smallest, step, _ = size_rule(depth, upsampling)
    period = step                                 # the pooling period is the size step
    lined_up = input_size_for_output(period, depth, upsampling)  # output >= one pooling period
    fits = lambda tile: batch_size * tile_bytes(tile, depth, filters, upsampling, channels,
                                                num_classes) <= budget
    low, high = 0, (needed - smallest) // step    # tiles smallest + k*step, k in [low, high]
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(smallest + middle * step) else (low, middle - 1)
    largest = max(smallest + low * step, min(lined_up, needed))
    out = output_size(largest, depth, upsampling)
    stride = max(period, out - out % period)
    count = -(-side // stride)                    # tiles per side
    per_tile = -(-side // count)
    per_tile = -(-per_tile // period) * period    # on the pooling grid
    return min(largest, input_size_for_output(per_tile, depth, upsampling))


def volume_tile_shape(volume_shape, plan, filters, channels=1, num_classes=2, batch_size=1,
                      budget=None):
    """The tile prediction uses for a ``ZYX`` ``volume_shape``: per axis the smallest valid
    size whose output covers the volume, then the largest axis shrunk by its size step
    until a batch fits ``budget`` bytes (default :func:`unet_tf.memory.inference_budget`);
    never below an output of one pooling period (tiles must line up)."""
    from .volume_sizes import (axis_periods, axis_rule, next_valid_volume_shape, per_axis,
                               volume_activation_bytes)
    budget = budget or inference_budget()
    rules = [axis_rule(p, k) for p, k in per_axis(plan)]
    tile = list(next_valid_volume_shape([n + shrink for n, (_, _, shrink)
                                         in zip(volume_shape[:3], rules)], plan))
    least = next_valid_volume_shape([period + shrink for period, (_, _, shrink)
                                     in zip(axis_periods(plan), rules)], plan)
    least = [min(t, m) for t, m in zip(tile, least)]
    fits = lambda t: batch_size * volume_activation_bytes(t, plan, filters, channels,
                                                          num_classes) <= budget
    while not fits(tile):
        shrinkable = [a for a in range(3) if tile[a] - rules[a][1] >= least[a]]
        if not shrinkable:
            break
        axis = max(shrinkable, key=lambda a: tile[a])
        tile[axis] -= rules[axis][1]
    return tuple(tile)


def check_fits(tile_size, batch_size, training, depth=5, filters=64, upsampling="transpose",
               channels=1, num_classes=2):
    """Raise ``ValueError`` if a batch of tiles clearly cannot fit in host memory.

    Skipped when a GPU is visible (its memory is not the host's) or the OS does not say.
    """
    per_tile = activation_bytes(tile_size, depth, filters, upsampling, channels, num_classes)
    check_bytes_fit(per_tile * batch_size, training, f"tile {tile_size} x batch {batch_size}")


def check_bytes_fit(activations, training, what):
    """Raise ``ValueError`` if ``activations`` bytes of a batch (``what``, for the message)
    clearly cannot fit in host memory; skipped with a GPU or when the OS does not say."""
    from .backend import tf
    available = available_bytes()
    if available is None or tf.config.list_physical_devices("GPU"):
        return
    needed = activations * (TRAINING_FACTOR if training else 1.0)
    if needed > available:
        run = "training" if training else "prediction"
        raise ValueError(f"{what} needs about {needed / GIB:.1f} GiB for {run}, but "
                         f"{available / GIB:.1f} GiB of memory is available: use a smaller "
                         "tile size or batch size")
