"""The self-describing model folder: what ``train`` writes and every other command reads.

    MODEL_DIR/
      model.keras    best model by validation loss (training loss without validation images);
                     loads with keras.saving.load_model after ``import unet_tf.layers``
      config.json    architecture, tile geometry, normalisation, classes, training settings,
                     data summary, versions: all that prediction and export need
      history.csv    one row per epoch
      logs/          TensorBoard: scalars and prediction images
      backup/        only while training runs: BackupAndRestore resumes a killed run from here
      export/        what ``unet-tf export`` writes (see :mod:`unet_tf.exporters`)

Prediction, evaluation and export depend on this module, never on the training loop.
"""

import dataclasses
import datetime
import json
from pathlib import Path

from . import layers  # noqa: F401  (registers the two layers every model.keras holds)
from .backend import keras, tf
from .instances import DEFAULT_SETTINGS
from .io import write_atomically
from .sizes import output_size
from .version import __version__

MODEL_FILE, CONFIG_FILE, HISTORY_FILE, BACKUP_DIR, LOGS_DIR, EXPORT_DIR = (
    "model.keras", "config.json", "history.csv", "backup", "logs", "export")
FORMAT_VERSION = 1


def folder_config(config, data_summary, distribution=None, plan=None):
    """The ``config.json`` of a model folder."""
    return {
        "format": "unet-tf model folder",
        "format_version": FORMAT_VERSION,
        "unet_tf_version": __version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "architecture": {"depth": config.depth, "filters": config.filters,
                         "upsampling": config.upsampling, "dropout": config.dropout,
                         "num_classes": config.num_classes, "channels": data_summary["channels"]},
        "tile_size": config.tile_size,
        "output_size": output_size(config.tile_size, config.depth, config.upsampling),
        "class_names": list(config.class_names),
        "normalization": dict(config.normalization),
        "weight_map": {"enabled": config.weight_map, "w0": config.w0, "sigma": config.border_sigma,
                       "class_weights": config.class_weights},
        "data": data_summary,
        "training": dataclasses.asdict(config),
        "distribution": distribution or {"strategy": "default", "replicas": 1,
                                         "global_batch": config.batch_size},
        "plan": plan,   # what the planner derived and why (None: settings given by hand)
        # how labels are made from the probabilities; tuned on validation images after training
        "postprocessing": ({"target": "classes"} if config.target == "classes"
                           else {**DEFAULT_SETTINGS, "target": config.target}),
    }


def write_config(folder, config, data_summary, distribution=None, plan=None):
    """Write ``folder/config.json`` (atomically) for a :class:`~unet_tf.config.TrainConfig`."""
    text = json.dumps(folder_config(config, data_summary, distribution, plan), indent=2)
    write_atomically(Path(folder) / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))


def update_config(folder, **entries):
    """Replace top-level ``entries`` of ``folder/config.json`` (atomically)."""
    path = Path(folder) / CONFIG_FILE
    text = json.dumps({**json.loads(path.read_text()), **entries}, indent=2)
    write_atomically(path, lambda tmp: Path(tmp).write_text(text))


def read_config(folder):
    """The ``config.json`` of a model folder, checked, without loading the model."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not a unet-tf model folder: {name} is missing")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{folder / CONFIG_FILE} is not valid JSON: {err}") from None
    if not isinstance(config, dict) or config.get("format_version") != FORMAT_VERSION:
        version = config.get("format_version") if isinstance(config, dict) else None
        raise ValueError(f"{folder / CONFIG_FILE}: unsupported format_version "
                         f"{version!r}, this unet-tf reads {FORMAT_VERSION}")
    missing = [k for k in ("architecture", "tile_size", "normalization") if k not in config]
    if missing:
        raise ValueError(f"{folder / CONFIG_FILE} lacks {missing}: not written by unet-tf train")
    return config


def load_model_folder(folder):
    """``(model, config)`` from a model folder written by :func:`train`."""
    folder = Path(folder)
    config = read_config(folder)
    try:
        # safe_mode (the default): no arbitrary code; compile=False: inference needs no optimizer
        model = keras.saving.load_model(folder / MODEL_FILE, compile=False)
    except Exception as err:
        raise ValueError(f"cannot load {folder / MODEL_FILE}: {err}") from None
    return model, config
