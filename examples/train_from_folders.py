"""Train from two folders with the Python API, then predict one image.

    python examples/train_from_folders.py IMAGES_DIR MASKS_DIR MODEL_DIR

Masks carry the images' file names (TIFF/PNG; instance labels or 0/255). Without arguments it
writes the bundled sample into ./example-data and trains on that.
"""

import sys
from pathlib import Path

import unet_tf
from unet_tf.io import load_pairs, write_image

if len(sys.argv) == 4:
    images_dir, masks_dir, out = sys.argv[1:]
else:
    image, instances = unet_tf.samples.load_sample()
    images_dir, masks_dir, out = "example-data/images", "example-data/masks", "example-model"
    for name, rows in (("top", slice(0, 256)), ("bottom", slice(256, 512))):
        write_image(Path(images_dir) / f"{name}.tif", image[rows], overwrite=True)
        write_image(Path(masks_dir) / f"{name}.tif", instances[rows], overwrite=True)

config = unet_tf.TrainConfig(out=out, images=images_dir, masks=masks_dir, tile_size=188, depth=4,
                     filters=16, dropout=0.0, epochs=5, steps_per_epoch=20, batch_size=4,
                     optimizer="adam", learning_rate=1e-3, val_split=0.5)
unet = unet_tf.UNet.train(config, overwrite=True)    # bound to the model folder it wrote

images, masks, names = load_pairs(images_dir, masks_dir)
scores = unet.evaluate(images[:1], masks[:1], names[:1])
print(f"{names[0]}: foreground IoU {scores[names[0]]['foreground_iou']:.3f}")
print(f"model folder: {out} (use it with `unet-tf predict {out} IMAGE --out DIR`)")
