"""unet-tf: the U-Net of Ronneberger et al. (2015) for TensorFlow/Keras 3.

``import unet_tf`` registers the package's Keras layers, so a saved ``model.keras`` loads with
plain ``keras.saving.load_model`` afterwards. The main entry points::

    unet = unet_tf.UNet.from_folder("my-model")     # a trained model folder
    labels = unet.segment(image)
    unet_tf.train(unet_tf.TrainConfig(...))          # writes a model folder
    model = unet_tf.build_unet()                     # the paper network, logits out
"""

import os

__version__ = "0.4.0"

# TensorFlow's C++ start-up lines (CPU feature notes, oneDNN) are INFO/WARNING noise for our
# users and would break the CLI's one-line error rule; an explicit setting is kept.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # the layers and exports are TensorFlow's

from .native import import_tensorflow_quietly  # noqa: E402

try:
    import_tensorflow_quietly()
except ModuleNotFoundError as err:
    if err.name != "tensorflow":
        raise
    raise ModuleNotFoundError(
        "unet-tf needs TensorFlow >= 2.16, installed as one of: pip install 'unet-tf[cpu]' "
        "(CPU only), 'unet-tf[gpu]' (Linux + NVIDIA GPU), 'unet-tf[tensorflow]' (macOS, or "
        "your own CUDA)") from None

from . import layers  # noqa: E402  (registers InputSizeCheck and NearestUpsample2x with Keras)
from . import exporters, io, metrics, samples  # noqa: E402
from .augment import Augmentation, elastic_deform  # noqa: E402
from .callbacks import TrainingDiverged  # noqa: E402
from .config import PRESETS, NothingLearned, TrainConfig  # noqa: E402
from .data import make_dataset  # noqa: E402
from .exporters import export_model  # noqa: E402
from .images import normalize  # noqa: E402
from .instances import label_instances  # noqa: E402
from .losses import weighted_pixel_loss  # noqa: E402
from .model import build_unet  # noqa: E402
from .model_folder import load_model_folder  # noqa: E402
from .sizes import (check_input_size, crop_amounts, input_size_for_output,  # noqa: E402
                    next_valid_input_size, output_size, size_rule)
from .tiling import predict_tiled  # noqa: E402
from .training import train  # noqa: E402
from .unet import UNet  # noqa: E402
from .weightmaps import weight_map  # noqa: E402

__all__ = ["Augmentation", "NothingLearned", "PRESETS", "TrainConfig", "TrainingDiverged", "UNet", "build_unet",
           "check_input_size", "label_instances",
           "crop_amounts", "elastic_deform", "export_model", "exporters", "input_size_for_output", "io",
           "layers", "metrics", "samples",
           "load_model_folder", "make_dataset", "next_valid_input_size", "normalize",
           "output_size", "predict_tiled", "size_rule", "train", "weight_map",
           "weighted_pixel_loss"]
