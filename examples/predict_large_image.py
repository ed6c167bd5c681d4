"""Overlap-tile prediction of a large image with a model folder, with a progress bar.

    python examples/predict_large_image.py MODEL_DIR [IMAGE]

Without IMAGE, a 2048x2048 mosaic of the bundled sample (mirrored copies) stands in for a
large acquisition. Memory holds the output and one batch of tiles, whatever the image size.
"""

import sys

import numpy as np

import unet_tf
from unet_tf.io import read_image, write_image

unet = unet_tf.UNet.from_folder(sys.argv[1])
if len(sys.argv) > 2:
    image = read_image(sys.argv[2])
else:
    sample = unet_tf.samples.load_sample()[0]
    image = np.block([[sample, sample[:, ::-1]], [sample[::-1], sample[::-1, ::-1]]])
    image = np.tile(image, (2, 2))
instances = unet.segment(image, batch_size=8, progress=True)  # the folder's tile and normalisation
write_image("large_labels.tif", instances, overwrite=True)
print(f"{image.shape} -> large_labels.tif with {instances.max()} objects")
