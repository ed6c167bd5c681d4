"""Which dimension a TIFF stack is, its voxel size, and folders of volumes and their masks.

A stack is a volume (``ZYX``, a 3-D net) when its axes say Z: tifffile's axes of an OME-TIFF
or ImageJ hyperstack (``slices``), or the user's ``--axes ZYX`` / ``--voxel-size``. It is a
series of 2-D frames when they say T (or the user says ``--axes TYX``). The voxel size comes
from OME-TIFF (``PhysicalSizeZ/Y/X``) or ImageJ (``spacing`` and the X/Y resolution), or from
``--voxel-size Z,Y,X``, which beats both. Plain Python with tifffile: no TensorFlow.
"""

import re
from pathlib import Path

import numpy as np
import tifffile

from .imagefiles import read_image
from .io import list_images

AXES = ("ZYX", "TYX")


def stack_info(path):
    """``(axes, voxel_size)`` a TIFF file states: tifffile's axes string (``"ZYX"``,
    ``"TZYX"``, ``"IYX"`` for unknown, ...) and ``(z, y, x)`` or ``None``."""
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return "YX", None
    with tifffile.TiffFile(path) as tif:
        axes = tif.series[0].axes
        return axes, _ome_voxel_size(tif) or _imagej_voxel_size(tif)


def _ome_voxel_size(tif):
    if not tif.is_ome or not tif.ome_metadata:
        return None
    found = {axis: re.search(rf'PhysicalSize{axis}="([0-9.eE+-]+)"', tif.ome_metadata)
             for axis in "ZYX"}
    if not all(found.values()):
        return None
    return tuple(float(found[axis].group(1)) for axis in "ZYX")


def _imagej_voxel_size(tif):
    meta = tif.imagej_metadata or {}
    if "spacing" not in meta:
        return None
    tags = tif.pages[0].tags
    size = []
    for name in ("YResolution", "XResolution"):
        if name not in tags:
            return None
        numerator, denominator = tags[name].value
        size.append(denominator / numerator if numerator else None)
    if None in size:
        return None
    return (float(meta["spacing"]), *size)


def parse_voxel_size(text):
    """``"1,0.2,0.2"`` -> ``(1.0, 0.2, 0.2)``; ``ValueError`` saying what was expected."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"--voxel-size must be three positive numbers Z,Y,X (e.g. 1,0.2,0.2), "
                         f"got {text!r}")
    return values


def is_volume_stack(path, axes=None, voxel_size=None):
    """Whether ``path`` is read as a volume: ``axes`` (``"ZYX"``/``"TYX"``) or a voxel size
    given decide; else the file's axes (Z and no T)."""
    if axes:
        return axes == "ZYX"
    if voxel_size:
        return True
    stated, _ = stack_info(path)
    return "Z" in stated and "T" not in stated


def check_volume_file(path, channels):
    """Refuse (``ValueError``), from its header alone, a file that is not a ``ZYX``/``ZYXC``
    stack with ``channels`` channels (``ZYX``: one)."""
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"{path}: a volume must be a ZYX (or ZYXC) TIFF stack")
    with tifffile.TiffFile(path) as tif:
        shape = tif.series[0].shape
    if len(shape) not in (3, 4):
        raise ValueError(f"{path}: a volume must be a ZYX (or ZYXC) TIFF stack, got shape "
                         f"{shape}")
    found = shape[3] if len(shape) == 4 else 1
    if found != channels:
        raise ValueError(f"{path} has {found} channel(s), the model expects {channels}")


def read_volume(path):
    """A file as one ``ZYX`` or ``ZYXC`` volume (a TIFF stack)."""
    array = read_image(path)
    if array.ndim not in (3, 4):
        raise ValueError(f"{path}: a volume must be a ZYX (or ZYXC) TIFF stack, got shape "
                         f"{array.shape}")
    return array


def volume_voxel_size(paths, given=None):
    """The voxel size of the volumes ``paths``: ``given`` (``--voxel-size``), else the one
    their metadata states (all alike); ``ValueError`` when none states one, or they differ."""
    if given:
        return tuple(given)
    sizes = {path: stack_info(path)[1] for path in paths}
    missing = [str(p) for p, size in sizes.items() if size is None]
    if missing:
        raise ValueError(f"{missing[0]} states no voxel size (OME-TIFF PhysicalSize or ImageJ "
                         "spacing): give --voxel-size Z,Y,X, e.g. --voxel-size 1,0.2,0.2")
    found = set(sizes.values())
    if len(found) > 1:
        raise ValueError(f"the volumes state different voxel sizes {sorted(found)}: resample "
                         "them to one, or give --voxel-size Z,Y,X")
    return found.pop()


def load_volume_pairs(images_dir, masks_dir):
    """``(volumes, masks, names, paths)`` from two folders of TIFF stacks matched by file
    stem, each file one volume; ``ValueError`` on an unmatched name or a shape mismatch."""
    images = {p.stem: p for p in list_images(images_dir, "images")}
    masks = {p.stem: p for p in list_images(masks_dir, "masks")}
    unmatched = sorted(images.keys() ^ masks.keys())
    if unmatched:
        raise ValueError(f"volumes and masks are matched by file name: {unmatched[:5]} have "
                         f"no partner (in {images_dir} / {masks_dir})")
    volumes, labels, names = [], [], []
    for stem in sorted(images):
        volume, mask = read_volume(images[stem]), read_image(masks[stem])
        if mask.shape != volume.shape[:3]:
            raise ValueError(f"{images[stem]} is {volume.shape[:3]} (ZYX) but its mask "
                             f"{masks[stem]} is {mask.shape}")
        volumes.append(volume)
        labels.append(mask)
        names.append(stem)
    return volumes, labels, names, [images[stem] for stem in sorted(images)]
