"""The custom layers of a unet-tf U-Net, registered with Keras under the package "unet_tf".

Importing this module (``import unet_tf.layers``, or anything of unet_tf that builds or loads a
model) lets ``keras.saving.load_model("M/model.keras")`` find them without
``custom_objects``. It imports nothing else of unet_tf but the size
arithmetic, which it needs to check sizes.
"""

from .backend import keras, tf
from .sizes import check_input_size, size_rule
from .volume_sizes import AXIS_NAMES, axis_rule, check_volume_shape, per_axis


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
class VolumeSizeCheck(keras.layers.Layer):
    """:class:`InputSizeCheck` for a 3-D U-Net: identity that rejects ``(Z, Y, X)`` sizes the
    net's per-axis ``plan`` (``{"pools", "kernels"}``) cannot process, naming the nearest valid
    sizes of each wrong axis (``ValueError`` for static sizes, ``InvalidArgumentError`` with the
    same words when the sizes are only known as the graph runs)."""

    def __init__(self, plan, **kwargs):
        super().__init__(**kwargs)
        self.plan = {"pools": [list(p) for p in plan["pools"]],
                     "kernels": [list(k) for k in plan["kernels"]]}
        self.rules = [axis_rule(p, k) for p, k in per_axis(self.plan)]   # validates the plan

    def call(self, x):
        static = tuple(x.shape[1:4])
        if all(s is not None for s in static):
            check_volume_shape(tuple(int(s) for s in static), self.plan)
            return x
        checks = []
        for axis, (name, (smallest, step, _)) in enumerate(zip(AXIS_NAMES, self.rules), 1):
            s = tf.shape(x)[axis]
            below = smallest + tf.maximum(s - smallest, 0) // step * step
            ok = tf.logical_and(s >= smallest, tf.equal((s - smallest) % step, 0))
            message = tf.strings.format(
                "input {} is not valid for this net (" + name + " {}: use {} or {})",
                (tf.shape(x)[1:4], s, below, below + step))
            checks.append(tf.debugging.Assert(ok, [message]))
        with tf.control_dependencies(checks):
            return tf.identity(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "plan": self.plan}


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


@keras.saving.register_keras_serializable(package="unet_tf")
class PlanarMaxPool3D(keras.layers.Layer):
    """``MaxPooling3D(pool_size)`` (valid, stride = pool) computed by 2-D max-pools: LiteRT has
    no 3-D max-pool. The ``(py, px)`` pool runs on the ``(B*Z, Y, X, C)`` planes, then the ``pz``
    pool on ``(B, Z, Y*X, C)``; the max of a box is the max of its planes' maxima, so the result
    is equal, not close. Needs static ``Z, Y, X`` (the fixed-tile nets TFLite exports are)."""

    def __init__(self, pool_size, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = tuple(int(p) for p in pool_size)

    def call(self, x):
        pz, py, px = self.pool_size
        z, y, w, c = x.shape[1:]
        if None in (z, y, w):
            raise ValueError(f"PlanarMaxPool3D needs static Z, Y, X sizes, got {x.shape}")
        if (py, px) != (1, 1):
            x = tf.nn.max_pool2d(tf.reshape(x, [-1, y, w, c]), (py, px), (py, px), "VALID")
            y, w = y // py, w // px
        if pz != 1:
            x = tf.nn.max_pool2d(tf.reshape(x, [-1, z, y * w, c]), (pz, 1), (pz, 1), "VALID")
            z //= pz
        return tf.reshape(x, [-1, z, y, w, c])

    def compute_output_shape(self, input_shape):
        b, *spatial, c = input_shape
        return (b, *(None if s is None else s // p for s, p in zip(spatial, self.pool_size)), c)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size}
