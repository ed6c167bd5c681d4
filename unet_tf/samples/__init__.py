"""Real sample data shipped inside the package (never downloaded at run time)."""

from importlib import resources

import tifffile


def load_sample():
    """The DSB2018 nuclei sample: ``(image, instances)``, both 512x512 uint16 ``YX`` arrays.

    A fluorescence image and its hand-annotated instance mask (0 = background, 1..125 = nuclei,
    many touching), from the 2018 Data Science Bowl via the ``stardist`` wheel (CC0 data,
    BSD-3 package). See ``unet_tf/samples/dsb2018/README.md``.
    """
    folder = resources.files(__name__) / "dsb2018"
    with resources.as_file(folder / "image.tif") as path:
        image = tifffile.imread(path)
    with resources.as_file(folder / "mask.tif") as path:
        instances = tifffile.imread(path)
    return image, instances
