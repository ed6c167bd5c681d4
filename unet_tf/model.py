"""The U-Net of Ronneberger et al. (2015) and its exact size arithmetic.

Every convolution is *valid* (no padding), so each 3x3 conv trims one pixel per side and each
level's feature map must be even before it is pooled. The result: an input of size ``s`` is valid
only if ``s = smallest + k * 2**(depth-1)`` for some ``k >= 0``, and the output is ``s - shrink``
where ``shrink`` is the same for every valid size (184 for the paper's depth 5 with up-convs,
so 572 -> 388). Because the arithmetic is affine in ``s``, the copy-and-crop amounts are the same
for every valid size too; they are computed here, never hard-coded.
"""

import functools

import keras
import tensorflow as tf

UPSAMPLING_MODES = ("transpose", "resize_conv")

# Named architectures with their training tile. "edge" is for int8 accelerators such as the
# Coral Edge TPU: resize + conv instead of stride-2 transposed convs (which often fail to map),
# 2.1 M parameters (2.1 MB as int8, well inside the ~6 MiB on-chip budget; the paper net has 31 M),
# and a 252 tile (150 output) so activations stay small.
PRESETS = {
    "paper": {"depth": 5, "filters": 64, "upsampling": "transpose", "tile_size": 572},
    "edge": {"depth": 4, "filters": 32, "upsampling": "resize_conv", "tile_size": 252},
}


# --------------------------------------------------------------------------- size arithmetic

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
        raise TypeError(f"input size must be an integer, got {size!r}")
    if not is_valid_input_size(size, depth, upsampling):
        raise ValueError(_invalid_size_message(size, depth, upsampling))


def output_size(input_size, depth=5, upsampling="transpose"):
    """Output size for a valid ``input_size`` (572 -> 388 for the paper net); else ``ValueError``."""
    check_input_size(input_size, depth, upsampling)
    return input_size - size_rule(depth, upsampling)[2]


def valid_input_size(min_size, depth=5, upsampling="transpose"):
    """The smallest valid input size ``>= min_size`` (e.g. 570 -> 572 at depth 5)."""
    smallest, step, _ = size_rule(depth, upsampling)
    if min_size <= smallest:
        return smallest
    return smallest + -(-(min_size - smallest) // step) * step


def input_size_for_output(min_output, depth=5, upsampling="transpose"):
    """The smallest valid input whose output is at least ``min_output`` pixels."""
    return valid_input_size(min_output + size_rule(depth, upsampling)[2], depth, upsampling)


# --------------------------------------------------------------------------- layers

@keras.saving.register_keras_serializable(package="unet_tf")
class InputSizeCheck(keras.layers.Layer):
    """Identity that rejects spatial sizes the U-Net cannot process, with a plain message.

    Known (static) sizes raise ``ValueError`` at call/trace time; sizes only known when the graph
    runs raise ``InvalidArgumentError`` carrying the same message. Without this check an invalid
    size fails deep inside a concatenation with a shape error that names no size.
    """

    def __init__(self, depth=5, upsampling="transpose", **kwargs):
        super().__init__(**kwargs)
        size_rule(depth, upsampling)  # validates the arguments
        self.depth = depth
        self.upsampling = upsampling

    def call(self, x):
        static = [x.shape[1], x.shape[2]]
        if all(s is not None for s in static):
            for s in static:
                check_input_size(int(s), self.depth, self.upsampling)
            return x
        smallest, step, _ = size_rule(self.depth, self.upsampling)
        checks = []
        for s in (tf.shape(x)[1], tf.shape(x)[2]):
            below = smallest + tf.maximum(s - smallest, 0) // step * step
            ok = tf.logical_and(s >= smallest, tf.equal((s - smallest) % step, 0))
            message = tf.strings.format(
                "input {} is not valid for depth {}: use {} or {}",
                (s, self.depth, below, below + step))
            checks.append(tf.debugging.Assert(ok, [message]))
        with tf.control_dependencies(checks):
            return tf.identity(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "depth": self.depth, "upsampling": self.upsampling}


@keras.saving.register_keras_serializable(package="unet_tf")
class NearestUpsample2x(keras.layers.Layer):
    """Nearest-neighbour x2 upsampling as one RESIZE_NEAREST_NEIGHBOR op.

    Keras' ``UpSampling2D`` lowers to RESHAPE+TILE in TFLite, which the Edge TPU cannot run.
    Nearest (not bilinear) because bilinear reads across the map border and would break the
    exact, seamless overlap-tile arithmetic. ``half_pixel_centers=False``: for an exact x2 it
    picks the same pixels as TF2's default, and it keeps the op at a version the Edge TPU
    compiler accepts (google-coral/edgetpu#187: "Operation version not supported").
    """

    def call(self, x):
        return tf.raw_ops.ResizeNearestNeighbor(images=x, size=2 * tf.shape(x)[1:3],
                                                align_corners=False, half_pixel_centers=False)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, None if h is None else 2 * h, None if w is None else 2 * w, c)


# --------------------------------------------------------------------------- builder

def _conv_block(x, filters, name):
    for i in (1, 2):
        x = keras.layers.Conv2D(filters, 3, padding="valid", activation="relu",
                                kernel_initializer="he_normal", name=f"{name}_conv{i}")(x)
    return x


def _upsample(x, filters, upsampling, name):
    if upsampling == "transpose":
        return keras.layers.Conv2DTranspose(filters, 2, strides=2, kernel_initializer="he_normal",
                                            name=f"{name}_upconv")(x)
    x = NearestUpsample2x(name=f"{name}_resize")(x)
    return keras.layers.Conv2D(filters, 3, padding="valid", kernel_initializer="he_normal",
                               name=f"{name}_upconv")(x)


def build_unet(input_shape=(None, None, 1), num_classes=2, depth=5, filters=64, dropout=0.5,
               upsampling="transpose", name="unet"):
    """Build the U-Net as a Keras functional model returning per-pixel class **logits**.

    Args:
        input_shape: ``(H, W, C)``; ``H``/``W`` may be ``None`` (any valid size is accepted).
        num_classes: output channels of the final 1x1 conv (2 in the paper).
        depth: number of resolution levels (5 in the paper: 4 poolings).
        filters: channels of the first level; doubled at every level (64 -> 1024).
        dropout: rate of the dropout at the end of the contracting path (0 disables it).
        upsampling: ``"transpose"`` (paper: 2x2 up-conv, stride 2) or ``"resize_conv"``
            (nearest x2 resize then a 3x3 valid conv; maps onto int8 edge accelerators, and
            shrinks the output by a little more: see :func:`size_rule`).

    The paper configuration on a 572x572x1 input has 23 conv layers, 31,030,658 parameters
    and a 388x388x2 output. Softmax is left to the loss (and added at export).
    """
    size_rule(depth, upsampling)  # validates depth and upsampling
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (H, W, C), got {input_shape!r}")
    for s in input_shape[:2]:
        if s is not None:
            check_input_size(s, depth, upsampling)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(filters, int) or filters < 1:
        raise ValueError(f"filters must be a positive integer, got {filters!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")

    inputs = keras.Input(shape=input_shape, name="image")
    x = InputSizeCheck(depth, upsampling, name="input_size_check")(inputs)
    skips = []
    for level in range(depth - 1):
        x = _conv_block(x, filters * 2 ** level, f"down{level}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
    x = _conv_block(x, filters * 2 ** (depth - 1), "bottom")
    if dropout:
        x = keras.layers.Dropout(dropout, name="bottom_dropout")(x)
    for level, skip, crop in reversed(list(zip(range(depth - 1), skips,
                                               crop_amounts(depth, upsampling)))):
        x = _upsample(x, filters * 2 ** level, upsampling, f"up{level}")
        skip = keras.layers.Cropping2D(crop, name=f"up{level}_crop")(skip)
        x = keras.layers.Concatenate(name=f"up{level}_concat")([skip, x])
        x = _conv_block(x, filters * 2 ** level, f"up{level}")
    logits = keras.layers.Conv2D(num_classes, 1, kernel_initializer="he_normal", dtype="float32",
                                 name="logits")(x)
    return keras.Model(inputs, logits, name=name)
