"""TensorFlow and Keras for the modules that compute: ``from .backend import keras, tf``.

The one place TensorFlow is imported, so it is imported once, quietly and with an install
hint. Only what computes imports this module; ``import unet_tf``, the CLI's parser, the size
arithmetic, config, io, metrics and instances do not (``unet-tf --help`` answers in well under
a second). TensorFlow's C++ start-up lines go to stderr whatever ``TF_CPP_MIN_LOG_LEVEL`` says
(see :mod:`.native`); with a CUDA build and no GPU the first device lookup prints a cuInit error
as well: both are captured, unless ``TF_CPP_MIN_LOG_LEVEL=0`` asks for them.
"""

import contextlib
import os

from .errors import MissingExtra
from .native import stderr_captured

INSTALL_HINT = ("unet-tf needs TensorFlow >= 2.16, installed as one of: pip install "
                "'unet-tf[cpu]' (CPU only), 'unet-tf[gpu]' (Linux + NVIDIA GPU), "
                "'unet-tf[tensorflow]' (macOS, or your own CUDA)")


def _import_quietly():
    quiet = os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "0"  # unet_tf/__init__ sets "2"
    with stderr_captured() if quiet else contextlib.nullcontext():
        try:
            import tensorflow
        except ModuleNotFoundError as err:
            if err.name != "tensorflow":
                raise
            raise MissingExtra(INSTALL_HINT, name="tensorflow") from None
        tensorflow.config.list_physical_devices()  # the cuInit line, if any, is printed here
    return tensorflow


tf = _import_quietly()

import keras  # noqa: E402  (after TensorFlow, which it loads as its backend)

__all__ = ["keras", "limit_threads", "tf"]


def limit_threads(threads):
    """Give TensorFlow ``threads`` cores; possible only before its runtime starts (any device
    query starts it), so a worker calls this first."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already running in this process: keep its pool
        pass
