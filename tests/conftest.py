import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if not os.environ.get("DISPLAY"):   # napari widget tests: Qt without a screen (a real viewer
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")   # needs one: xvfb-run)

import numpy as np
import pytest


def pytest_xdist_auto_num_workers(config):
    """Workers for ``-n auto`` (pytest.ini): one per core, but at most one per 3 GiB of available
    memory (each is a TensorFlow process training small nets) and 8 (there are ~40 test files,
    and each worker's TensorFlow already uses every core)."""
    from unet_tf.memory import available_bytes   # loads no TensorFlow
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count()) or 1
    available = available_bytes()                 # None where unknown: the cores decide
    by_memory = int(available // (3 * 2**30)) if available else cores
    return max(1, min(cores, by_memory, 8))


@pytest.fixture(scope="session")
def sample():
    from unet_tf.samples import load_sample
    return load_sample()


@pytest.fixture(autouse=True)
def _seed():
    from unet_tf.backend import keras   # TensorFlow loaded the way unet_tf loads it (backend.py)
    keras.utils.set_random_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def trained_folder(tmp_path_factory, sample):
    """A small model folder trained for ~20 s on the left three quarters of the sample (its
    training images stay on disk, as int8 calibration reads them); the rest is held out."""
    from unet_tf.io import write_image
    from unet_tf.config import TrainConfig
    from unet_tf.training import train
    image, instances = sample
    root = tmp_path_factory.mktemp("trained")
    write_image(root / "images" / "nuclei.tif", image[:, :384])
    write_image(root / "masks" / "nuclei.tif", instances[:, :384])
    config = TrainConfig(out=str(root / "model"), images=str(root / "images"),
                         masks=str(root / "masks"), tile_size=188, depth=4, filters=8,
                         dropout=0.0, epochs=15, steps_per_epoch=20, batch_size=4,
                         optimizer="adam", learning_rate=2e-3, lr_schedule="cosine",
                         class_weights=None, val_split=0.0)
    train(config, verbose=0)
    return root / "model"


@pytest.fixture(scope="session")
def trained_volume_folder(tmp_path_factory):
    """A small 3-D model folder trained for ~20 s on the left half of the bundled volume
    (40x128x256 confocal nuclei; isotropic enough for 2x2x2 pools): weak, but it finds
    objects, enough to compare runtimes; the right half is held out."""
    from unet_tf.config import TrainConfig
    from unet_tf.samples import VOLUME_VOXEL_SIZE, load_sample_volume
    from unet_tf.unet import UNet
    volume, labels = load_sample_volume()
    out = tmp_path_factory.mktemp("volume") / "model"
    config = TrainConfig(out=str(out), voxel_size=list(VOLUME_VOXEL_SIZE), tile_size=[44, 64, 64],
                         depth=3, filters=8, dropout=0.0, epochs=4, steps_per_epoch=15,
                         optimizer="adam", learning_rate=3e-3, val_split=0.0, seed=0)
    UNet.train(config, [volume[:, :, :128]], [labels[:, :, :128]], verbose=0)
    return out


def blocking(*names):
    """``python -c`` code that runs a script (its argv[1]) with ``names`` unimportable."""
    return f"""
import runpy, sys
for name in {names!r}:
    sys.modules[name] = None          # any import of them now raises ImportError
sys.argv = sys.argv[1:]
sys.exit(runpy.run_path(sys.argv[0], run_name="__main__"))
"""


# What a device with only the deployment kit's requirements has: no TensorFlow, Keras, unet_tf
# or SciPy (which the kit needs for 3-D labels only).
BLOCK_TENSORFLOW = blocking("tensorflow", "keras", "unet_tf", "scipy")


def run_cli(*args, timeout=900):
    """``unet-tf ARGS`` in a fresh interpreter (``from conftest import run_cli``): for what only a
    new process shows (exit codes, stderr, start-up); in-process ``main([...])`` is faster."""
    return subprocess.run([sys.executable, "-m", "unet_tf.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
