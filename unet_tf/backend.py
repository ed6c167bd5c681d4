"""TensorFlow and Keras for the modules that compute: ``from .backend import keras, tf``.

The one place TensorFlow is imported, so it is imported once, quietly and with an install
hint. Only what computes imports this module; ``import unet_tf``, the CLI's parser, the size
arithmetic, config, io, metrics and instances do not (``unet-tf --help`` answers in well under
a second). TensorFlow's C++ start-up lines go to stderr whatever ``TF_CPP_MIN_LOG_LEVEL`` says
(see :mod:`.native`); with a CUDA build and no GPU the first device lookup prints a cuInit error
as well: both are captured, unless ``TF_CPP_MIN_LOG_LEVEL=0`` asks for them.

TensorFlow's libraries carry the LLVM it is built with (110 000 exported ``llvm::`` symbols),
and so does Mesa's software OpenGL (llvmpipe: VMs, remote desktops, Xvfb), which napari draws
with. Linked the usual way they bind to each other's LLVM and segfault: Mesa in
``glDrawArrays`` when TensorFlow came first, TensorFlow in its static initialisers when napari
had drawn first. :func:`_kept_apart` loads TensorFlow so that neither happens.
"""

import contextlib
import ctypes
import importlib.util
import os
import sys

from .errors import MissingExtra
from .native import stderr_captured

INSTALL_HINT = ("unet-tf needs TensorFlow >= 2.16, installed as one of: pip install "
                "'unet-tf[cpu]' (CPU only), 'unet-tf[gpu]' (Linux + NVIDIA GPU), "
                "'unet-tf[tensorflow]' (macOS, or your own CUDA)")


@contextlib.contextmanager
def _kept_apart():
    """Import TensorFlow with its libraries' symbols to themselves (Linux; a no-op elsewhere):
    ``RTLD_LOCAL`` (its global-flags module made unimportable sends TensorFlow down the path it
    takes for builds linked to libtensorflow_framework, which this one is: every extension names
    it), and where an LLVM is loaded already, its two libraries loaded first with
    ``RTLD_DEEPBIND``, so that their own LLVM calls stay inside them."""
    if "tensorflow" in sys.modules:  # imported already (by the caller): its flags stand
        yield
        return
    spec = importlib.util.find_spec("tensorflow")
    if spec and hasattr(os, "RTLD_DEEPBIND") and _llvm_loaded():
        root = spec.submodule_search_locations[0]
        for name in ("libtensorflow_framework.so.2", "libtensorflow_cc.so.2"):
            if os.path.exists(os.path.join(root, name)):
                ctypes.CDLL(os.path.join(root, name),
                            mode=os.RTLD_LAZY | os.RTLD_LOCAL | os.RTLD_DEEPBIND)
    name = "tensorflow.python.pywrap_dlopen_global_flags"
    sys.modules[name] = None  # "import" of a None entry raises ImportError
    try:
        yield
    finally:
        del sys.modules[name]


def _llvm_loaded():
    try:
        with open("/proc/self/maps") as maps:
            return "/libLLVM" in maps.read()
    except OSError:
        return False


def _import_quietly():
    quiet = os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "0"  # unet_tf/__init__ sets "2"
    with stderr_captured() if quiet else contextlib.nullcontext(), _kept_apart():
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
