"""The exact size arithmetic of a valid-convolution U-Net (pure Python, no TensorFlow).

Every convolution is *valid* (no padding), so each 3x3 conv trims one pixel per side and each
level's feature map must be even before it is pooled. The result: an input of size ``s`` is valid
only if ``s = smallest + k * 2**(depth-1)`` for some ``k >= 0``, and the output is ``s - shrink``
where ``shrink`` is the same for every valid size (184 for the paper's depth 5 with up-convs,
so 572 -> 388). Because the arithmetic is affine in ``s``, the copy-and-crop amounts are the same
for every valid size too; they are computed here, never hard-coded.
"""

import functools

from .errors import InvalidType

UPSAMPLING_MODES = ("transpose", "resize_conv")


def _check_architecture(depth, upsampling):
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 2:
        raise ValueError(f"depth must be an integer >= 2 (levels, 4 pools = depth 5), got {depth!r}")
    if upsampling not in UPSAMPLING_MODES:
        raise ValueError(f"upsampling must be one of {UPSAMPLING_MODES}, got {upsampling!r}")


def _upsampled(size, upsampling):
    # Conv2DTranspose(2, strides=2) doubles exactly; nearest x2 + 3x3 valid conv loses 2 pixels.
    return 2 * size if upsampling == "transpose" else 2 * size - 2


def _trace_sizes(size, depth, upsampling):
    """Follow one spatial size through the network.

    Returns ``(encoder_sizes, upsampled_sizes, output_size)`` with the encoder map size after the
    two convs of each level above the bottom and the decoder map size right after each
    up-sampling (bottom-up order), or ``None`` when ``size`` is not valid.
    """
    encoder = []
    for _ in range(depth - 1):
        size -= 4
        if size <= 0 or size % 2:
            return None
        encoder.append(size)
        size //= 2
    size -= 4
    if size <= 0:
        return None
    upsampled = []
    for _ in range(depth - 1):
        size = _upsampled(size, upsampling)
        upsampled.append(size)
        size -= 4
        if size <= 0:
            return None
    return encoder, upsampled, size


@functools.lru_cache(maxsize=None)
def size_rule(depth=5, upsampling="transpose"):
    """``(smallest, step, shrink)``: valid sizes are ``smallest + k*step``; output = input - shrink."""
    _check_architecture(depth, upsampling)
    step = 2 ** (depth - 1)
    smallest = 1
    while _trace_sizes(smallest, depth, upsampling) is None:
        smallest += 1
    shrink = smallest - _trace_sizes(smallest, depth, upsampling)[2]
    return smallest, step, shrink


def crop_amounts(depth=5, upsampling="transpose"):
    """Pixels cropped per side from each encoder map (top level first) before concatenation."""
    smallest, _, _ = size_rule(depth, upsampling)
    encoder, upsampled, _ = _trace_sizes(smallest, depth, upsampling)
    return [(e - u) // 2 for e, u in zip(encoder, reversed(upsampled))]


def _invalid_size_message(size, depth, upsampling):
    smallest, step, _ = size_rule(depth, upsampling)
    if size < smallest:
        hint = f"use {smallest} or larger"
    else:
        below = smallest + (size - smallest) // step * step
        hint = f"use {below} or {below + step}"
    return f"input {size} is not valid for depth {depth}: {hint}"


def is_valid_input_size(size, depth=5, upsampling="transpose"):
    smallest, step, _ = size_rule(depth, upsampling)
    return size >= smallest and (size - smallest) % step == 0


def check_input_size(size, depth=5, upsampling="transpose"):
    """Raise ``ValueError`` naming the two nearest valid sizes unless ``size`` is valid."""
    if not isinstance(size, int) or isinstance(size, bool):
        raise InvalidType(f"input size must be an integer, got {size!r}")
    if not is_valid_input_size(size, depth, upsampling):
        raise ValueError(_invalid_size_message(size, depth, upsampling))


def output_size(input_size, depth=5, upsampling="transpose"):
    """Output size for a valid ``input_size`` (572 -> 388 for the paper net); else ``ValueError``."""
    check_input_size(input_size, depth, upsampling)
    return input_size - size_rule(depth, upsampling)[2]


def next_valid_input_size(min_size, depth=5, upsampling="transpose"):
    """The smallest valid input size ``>= min_size`` (e.g. 570 -> 572 at depth 5)."""
    smallest, step, _ = size_rule(depth, upsampling)
    if min_size <= smallest:
        return smallest
    return smallest + -(-(min_size - smallest) // step) * step


def input_size_for_output(min_output, depth=5, upsampling="transpose"):
    """The smallest valid input whose output is at least ``min_output`` pixels."""
    return next_valid_input_size(min_output + size_rule(depth, upsampling)[2], depth, upsampling)
