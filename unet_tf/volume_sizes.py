"""Per-axis architecture and size arithmetic of a volume U-Net (pure Python, no TensorFlow).

A 3-D U-Net (Cicek et al. 2016) on anisotropic voxels cannot pool or convolve every axis alike:
a stack of 5 slices at 1 um over 0.2 um pixels has no room along z for 3x3x3 convolutions and
2x2x2 pools. :func:`plan_axes` follows nnU-Net's rule, level by level: an axis whose spacing is
within 2x of the finest is pooled (its spacing then doubles) and convolved with 3-sized kernels;
a much coarser axis is neither (1-sized kernels, pool 1) until pooling the others catches it up.
Then, for an axis whose extent is too small for that plan, the deepest pool and 3-kernel go
first, until the extent is a valid input.

Along one axis, a level with kernel ``k`` trims ``2 (k - 1)`` per conv pair, a pool ``p`` needs
a size divisible by ``p`` and an up-conv (kernel = stride = ``p``) multiplies by ``p``. As in
:mod:`unet_tf.sizes`, the arithmetic is affine: the valid sizes are ``smallest + j * step``
(``step`` the product of the axis's pools) and the output is ``input - shrink`` for all of them.
"""

import functools
import math

from .errors import InvalidType

AXIS_NAMES = "ZYX"


def _check_plan(pools, kernels):
    if len(kernels) != len(pools) + 1 or not pools:
        raise ValueError(f"an axis needs one pool per level above the bottom and one kernel per "
                         f"level, got pools {pools!r} and kernels {kernels!r}")
    if any(p not in (1, 2) for p in pools) or any(k not in (1, 3) for k in kernels):
        raise ValueError(f"pools must be 1 or 2 and kernels 1 or 3, got pools {pools!r} and "
                         f"kernels {kernels!r}")


def trace_axis(size, pools, kernels):
    """``(encoder, upsampled, output)`` sizes along one axis (as :func:`sizes._trace_sizes`),
    or ``None`` when ``size`` is not valid."""
    encoder = []
    for pool, kernel in zip(pools, kernels):
        size -= 2 * (kernel - 1)
        if size <= 0 or size % pool:
            return None
        encoder.append(size)
        size //= pool
    size -= 2 * (kernels[-1] - 1)
    if size <= 0:
        return None
    upsampled = []
    for pool, kernel in reversed(list(zip(pools, kernels))):
        size *= pool
        upsampled.append(size)
        size -= 2 * (kernel - 1)
        if size <= 0:
            return None
    return encoder, upsampled, size


@functools.lru_cache(maxsize=None)
def axis_rule(pools, kernels):
    """``(smallest, step, shrink)`` along one axis: valid sizes are ``smallest + j*step``, and
    the output is ``input - shrink``. ``pools`` and ``kernels`` are tuples, top level first."""
    pools, kernels = tuple(pools), tuple(kernels)
    _check_plan(pools, kernels)
    step = math.prod(pools)
    smallest = 1
    while trace_axis(smallest, pools, kernels) is None:
        smallest += 1
    return smallest, step, smallest - trace_axis(smallest, pools, kernels)[2]


def axis_crops(pools, kernels):
    """Voxels cropped per side from each encoder map along one axis (top level first)."""
    encoder, upsampled, _ = trace_axis(axis_rule(pools, kernels)[0], pools, kernels)
    return [(e - u) // 2 for e, u in zip(encoder, reversed(upsampled))]


def per_axis(plan):
    """``plan`` = ``{"pools": [level][axis], "kernels": [level][axis]}`` -> per-axis tuples."""
    pools, kernels = plan["pools"], plan["kernels"]
    axes = len(kernels[0])
    return [(tuple(level[a] for level in pools), tuple(level[a] for level in kernels))
            for a in range(axes)]


def plan_axes(voxel_size, depth, shape=None):
    """nnU-Net's pooling and kernel rule for ``voxel_size`` (Z, Y, X), ``depth`` levels.

    Returns ``{"pools": [...], "kernels": [...]}``: per level (top first) a tuple per axis;
    ``depth - 1`` pools and ``depth`` kernels. With ``shape`` (the extent the net must accept
    along each axis, e.g. a stack's 5 slices), an axis too short for the plan loses its deepest
    pool, then its deepest 3-kernel, until ``shape`` along it is at least its smallest valid size.

    Example:
        >>> plan_axes((1.0, 0.2, 0.2), depth=4)["pools"]
        [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
    """
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 2:
        raise ValueError(f"depth must be an integer >= 2, got {depth!r}")
    spacing = [float(s) for s in voxel_size]
    if not spacing or any(not s > 0 or math.isinf(s) for s in spacing):
        raise ValueError(f"voxel size must be positive numbers, one per axis, got {voxel_size!r}")
    if shape is not None and len(shape) != len(spacing):
        raise ValueError(f"shape {tuple(shape)} and voxel size {tuple(voxel_size)} name "
                         "different numbers of axes")
    pools, kernels, convolved = [], [], [False] * len(spacing)
    for level in range(depth):
        fine = [s < 2 * min(spacing) for s in spacing]
        convolved = [c or f for c, f in zip(convolved, fine)]   # 3-kernels once fine, for good
        kernels.append(tuple(3 if c else 1 for c in convolved))
        if level < depth - 1:
            pools.append(tuple(2 if f else 1 for f in fine))
            spacing = [s * p for s, p in zip(spacing, pools[-1])]
    if shape is not None:
        for axis, extent in enumerate(shape):
            while axis_rule(*per_axis({"pools": pools, "kernels": kernels})[axis])[0] > extent:
                if not _drop_deepest(pools, axis, 2) and not _drop_deepest(kernels, axis, 3):
                    break   # all 1s: any extent >= 1 is valid
    return {"pools": pools, "kernels": kernels}


def _drop_deepest(levels, axis, value):
    for level in reversed(range(len(levels))):
        if levels[level][axis] == value:
            levels[level] = tuple(1 if a == axis else v for a, v in enumerate(levels[level]))
            return True
    return False


def _names(axes):
    return AXIS_NAMES[-axes:] if axes <= len(AXIS_NAMES) else [f"axis {a}" for a in range(axes)]


def check_volume_shape(shape, plan):
    """Raise ``ValueError`` naming, for each invalid axis, the two nearest valid sizes."""
    problems = shape_problems(shape, plan)
    if problems:
        raise ValueError(f"input {tuple(shape)} is not valid for this net ("
                         + "; ".join(problems) + ")")


def shape_problems(shape, plan):
    """Per invalid axis of ``shape``, what is wrong and the nearest valid sizes (empty: valid)."""
    problems = []
    for name, size, (pools, kernels) in zip(_names(len(shape)), shape, per_axis(plan)):
        if not isinstance(size, int) or isinstance(size, bool):
            raise InvalidType(f"volume sizes must be integers, got {tuple(shape)!r}")
        smallest, step, _ = axis_rule(pools, kernels)
        if size < smallest:
            problems.append(f"{name} {size}: use {smallest} or larger")
        elif (size - smallest) % step:
            below = smallest + (size - smallest) // step * step
            problems.append(f"{name} {size}: use {below} or {below + step}")
    return problems


def volume_output_shape(shape, plan):
    """The output shape for a valid input ``shape``; else ``ValueError``."""
    check_volume_shape(shape, plan)
    return tuple(s - axis_rule(p, k)[2] for s, (p, k) in zip(shape, per_axis(plan)))


def next_valid_volume_shape(shape, plan):
    """Per axis, the smallest valid size ``>=`` the one asked for."""
    out = []
    for size, (pools, kernels) in zip(shape, per_axis(plan)):
        smallest, step, _ = axis_rule(pools, kernels)
        out.append(smallest if size <= smallest
                   else smallest + -(-(size - smallest) // step) * step)
    return tuple(out)


def volume_activation_bytes(shape, plan, filters, channels=1, num_classes=2):
    """Bytes of all float32 layer outputs of :func:`unet_tf.build_unet_3d` for one valid
    ``shape`` (Z, Y, X) input, counted from the per-axis sizes (no model is built)."""
    check_volume_shape(tuple(shape), plan)
    traces = [trace_axis(size, p, k) for size, (p, k) in zip(shape, per_axis(plan))]
    kernels, depth = plan["kernels"], len(plan["kernels"])
    voxels = lambda sizes: math.prod(sizes)
    total = voxels(shape) * channels
    size = list(shape)
    for level in range(depth):       # contracting path and bottom: two convs (and a pool)
        width = filters * 2 ** level
        first = [s - (k - 1) for s, k in zip(size, kernels[level])]
        size = [f - (k - 1) for f, k in zip(first, kernels[level])]
        total += (voxels(first) + voxels(size)) * width
        if level < depth - 1:
            size = [s // p for s, p in zip(size, plan["pools"][level])]
            total += voxels(size) * width
    for step, level in enumerate(reversed(range(depth - 1))):   # up-conv, crop, concat, convs
        width = filters * 2 ** level
        up = [t[1][step] for t in traces]
        total += voxels(up) * width * 4   # up-conv, cropped skip, concatenation (2 widths)
        first = [u - (k - 1) for u, k in zip(up, kernels[level])]
        size = [f - (k - 1) for f, k in zip(first, kernels[level])]
        total += (voxels(first) + voxels(size)) * width
    return 4 * (total + voxels(size) * num_classes)


def axis_periods(plan):
    """The pooling period along each axis (the product of its pools)."""
    return [math.prod(pools) for pools, _ in per_axis(plan)]


def voxel_text(voxel_size):
    """A voxel size as people write it: ``(0.29, 0.26, 0.26)`` -> ``"0.29x0.26x0.26"``."""
    return "x".join(f"{v:g}" for v in voxel_size)
