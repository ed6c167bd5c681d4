"""unet-tf: the U-Net of Ronneberger et al. (2015) for TensorFlow/Keras 3.

The main entry points::

    unet = unet_tf.UNet.from_folder("my-model")     # a trained model folder
    labels = unet.segment(image)
    unet_tf.train(unet_tf.TrainConfig(...))          # writes a model folder
    model = unet_tf.build_unet()                     # the paper network, logits out

The package is lazy (PEP 562, as scikit-image is): ``import unet_tf`` loads no TensorFlow; the
first name that computes (``unet_tf.UNet``, ``unet_tf.train``, ...) imports it, quietly, through
:mod:`unet_tf.backend`. Loading a ``model.keras`` with plain ``keras.saving.load_model`` needs the
package's two Keras layers registered: ``import unet_tf.layers`` does it (so does ``import
unet_tf`` when Keras is already imported, and anything of unet_tf that builds or loads a model).
"""

import importlib
import os
import sys

from .version import __version__  # noqa: F401  (unet_tf.__version__)

# An explicit setting is kept; ours, set before anything imports TensorFlow: its C++ INFO and
# WARNING noise off, Keras on TensorFlow (the layers and the exports are TensorFlow's).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# public name -> the module that defines it
_NAMES = {
    "Augmentation": "augment", "elastic_deform": "augment",
    "TrainingDiverged": "callbacks",
    "PRESETS": "config", "NothingLearned": "config", "TrainConfig": "config",
    "make_dataset": "data",
    "export_model": "exporters",
    "normalize": "images",
    "label_instances": "instances",
    "weighted_pixel_loss": "losses",
    "build_unet": "model",
    "load_model_folder": "model_folder", "ModelConfig": "model_folder", "read_config": "model_folder",
    "check_input_size": "sizes", "crop_amounts": "sizes", "input_size_for_output": "sizes",
    "next_valid_input_size": "sizes", "output_size": "sizes", "size_rule": "sizes",
    "predict_tiled": "tiling",
    "train": "training",
    "UNet": "unet",
    "weight_map": "weightmaps",
}
_SUBMODULES = {"exporters", "io", "layers", "metrics", "samples"}

__all__ = sorted([*_NAMES, *_SUBMODULES])

if "keras" in sys.modules:  # TensorFlow is loaded already: registering the layers costs nothing
    from . import layers  # noqa: F401


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__():
    return sorted([*globals(), *__all__])
