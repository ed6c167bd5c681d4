"""The U-Net of Ronneberger et al. (2015) as a Keras functional model.

Sizes follow :mod:`unet_tf.sizes`; the two custom layers live in :mod:`unet_tf.layers`.
"""

from .backend import keras
from .layers import InputSizeCheck, NearestUpsample2x, VolumeSizeCheck
from .sizes import check_input_size, crop_amounts, size_rule
from .volume_sizes import per_axis, axis_crops, axis_rule, check_volume_shape, plan_axes


def _conv_block(x, filters, name, kernel=3, conv=None):
    """Two valid convolutions with ReLU (``conv``: Conv2D, or Conv3D for volumes)."""
    conv = conv or keras.layers.Conv2D
    for i in (1, 2):
        x = conv(filters, kernel, padding="valid", activation="relu",
                 kernel_initializer="he_normal", name=f"{name}_conv{i}")(x)
    return x


def _check_head(num_classes, filters, dropout):
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(filters, int) or filters < 1:
        raise ValueError(f"filters must be a positive integer, got {filters!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


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

    Returns:
        A ``keras.Model`` from ``(B, H, W, C)`` images to ``(B, H-shrink, W-shrink,
        num_classes)`` logits (see :func:`unet_tf.sizes.size_rule`). The paper configuration on
        a 572x572x1 input has 23 conv layers, 31,030,658 parameters and a 388x388x2 output.
        Softmax is left to the loss (and added at export).

    Raises:
        ValueError: an invalid depth, upsampling, size, class count, width or dropout.

    Example:
        >>> build_unet((572, 572, 1)).output_shape
        (None, 388, 388, 2)
    """
    size_rule(depth, upsampling)  # validates depth and upsampling
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (H, W, C), got {input_shape!r}")
    for s in input_shape[:2]:
        if s is not None:
            check_input_size(s, depth, upsampling)
    _check_head(num_classes, filters, dropout)

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


def build_unet_3d(input_shape=(None, None, None, 1), num_classes=2, plan=None, filters=32,
                  dropout=0.0, name="unet3d"):
    """The 3-D U-Net (Cicek et al. 2016): valid convolutions, max-pooling, up-convs and
    copy-and-crop, with per-axis pools and kernels (:func:`unet_tf.volume_sizes.plan_axes`).

    Args:
        input_shape: ``(Z, Y, X, C)``; sizes may be ``None``; known ones are checked.
        num_classes: output channels of the final 1x1x1 conv.
        plan: ``{"pools": [...], "kernels": [...]}`` per level and axis; default: isotropic
            voxels, depth 4 (``plan_axes((1, 1, 1), 4)``: 2x2x2 pools, 3x3x3 kernels).
        filters: channels of the first level; doubled at every level.
        dropout: rate of the dropout at the bottom (0 disables it).

    Returns:
        A ``keras.Model`` from ``(B, Z, Y, X, C)`` volumes to logits of the shape
        :func:`unet_tf.volume_sizes.volume_output_shape` gives, ``num_classes`` channels.

    Example:
        >>> plan = plan_axes((1.0, 0.2, 0.2), 4, shape=(5, 100, 100))   # 5 slices at 1 um
        >>> build_unet_3d((5, 100, 100, 1), plan=plan).output_shape
        (None, 5, 12, 12, 2)
    """
    plan = plan or plan_axes((1.0, 1.0, 1.0), 4)
    rules = [axis_rule(p, k) for p, k in per_axis(plan)]   # validates the plan
    if len(input_shape) != 4 or len(rules) != 3:
        raise ValueError(f"input_shape must be (Z, Y, X, C) and the plan 3 axes, got "
                         f"{input_shape!r} and {len(rules)} axes")
    if all(s is not None for s in input_shape[:3]):
        check_volume_shape(tuple(input_shape[:3]), plan)
    _check_head(num_classes, filters, dropout)
    pools, kernels = plan["pools"], plan["kernels"]
    crops = list(zip(*[axis_crops(p, k) for p, k in per_axis(plan)]))   # [level][axis]
    depth = len(kernels)

    def conv_block(x, level, name):
        return _conv_block(x, filters * 2 ** level, name, kernels[level], keras.layers.Conv3D)

    inputs = keras.Input(shape=input_shape, name="volume")
    x, skips = VolumeSizeCheck(plan, name="volume_size_check")(inputs), []
    for level in range(depth - 1):
        x = conv_block(x, level, f"down{level}")
        skips.append(x)
        x = keras.layers.MaxPooling3D(pools[level], name=f"down{level}_pool")(x)
    x = conv_block(x, depth - 1, "bottom")
    if dropout:
        x = keras.layers.Dropout(dropout, name="bottom_dropout")(x)
    for level in reversed(range(depth - 1)):
        x = keras.layers.Conv3DTranspose(filters * 2 ** level, pools[level], strides=pools[level],
                                         kernel_initializer="he_normal",
                                         name=f"up{level}_upconv")(x)
        skip = keras.layers.Cropping3D(tuple((c, c) for c in crops[level]),
                                       name=f"up{level}_crop")(skips[level])
        x = keras.layers.Concatenate(name=f"up{level}_concat")([skip, x])
        x = conv_block(x, level, f"up{level}")
    logits = keras.layers.Conv3D(num_classes, 1, kernel_initializer="he_normal", dtype="float32",
                                 name="logits")(x)
    return keras.Model(inputs, logits, name=name)
