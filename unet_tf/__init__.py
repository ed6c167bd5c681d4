"""unet-tf: the U-Net of Ronneberger et al. (2015) for TensorFlow/Keras 3.

Names are imported on first use, so ``import unet_tf`` (and the CLI's argument checks) do not
pay for importing TensorFlow.
"""

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "build_unet": "model",
    "check_input_size": "model",
    "crop_amounts": "model",
    "input_size_for_output": "model",
    "output_size": "model",
    "size_rule": "model",
    "valid_input_size": "model",
    "normalize": "images",
    "weighted_pixel_loss": "losses",
    "weight_map": "weights",
    "elastic_deform": "augment",
    "Augmentation": "augment",
    "make_dataset": "data",
    "predict_tiled": "tiling",
    "train": "training",
    "TrainConfig": "training",
    "load_model_folder": "training",
    "run_demo": "demo",
}
_SUBMODULES = ("augment", "cli", "data", "datasets", "demo", "images", "io", "losses", "metrics",
               "model", "postprocess", "tiling", "training", "weights")

__all__ = sorted([*_EXPORTS, *_SUBMODULES])


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'unet_tf' has no attribute {name!r}")


def __dir__():
    return __all__
