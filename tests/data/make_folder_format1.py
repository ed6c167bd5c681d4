"""How ``tests/data/folder_format1`` was made: a model folder as unet-tf 0.4.0 wrote it
(config.json format_version 1, commit 4e3f533), with what it predicted then.

Run once at that commit and kept, so that tests/test_model_config.py can prove that later code
still loads and predicts it the same. Do not rerun it with newer code: the point is the old writer.
"""

import shutil
import sys
from pathlib import Path

import numpy as np

from unet_tf import UNet
from unet_tf.config import TrainConfig
from unet_tf.samples import load_sample
from unet_tf.training import train

HERE = Path(__file__).parent
FOLDER = HERE / "folder_format1"
# The region of the bundled sample that predictions are kept for (held out from training).
REGION = (slice(0, 160), slice(384, 512))

if __name__ == "__main__":
    image, instances = load_sample()
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/folder_format1")
    train(TrainConfig(out=str(out), tile_size=124, depth=3, filters=8, dropout=0.0, epochs=10,
                      steps_per_epoch=20, batch_size=4, optimizer="adam", learning_rate=2e-3,
                      class_weights=None, val_split=0.0),
          [image[:, :384]], [instances[:, :384]], verbose=0)
    shutil.rmtree(FOLDER, ignore_errors=True)
    FOLDER.mkdir()
    for name in ("model.keras", "config.json"):
        shutil.copy(out / name, FOLDER / name)
    unet = UNet.from_folder(FOLDER)
    crop = image[REGION]
    np.savez_compressed(HERE / "folder_format1_expected.npz",
                        probabilities=unet.predict(crop, tile_size=124)[..., 1],
                        labels=unet.segment(crop, tile_size=124))
