"""Reading one image file: TIFF (8/16-bit, multi-page stacks) and PNG/JPEG/BMP, with an error
that names the file for a missing, corrupt or undecodable one.

tifffile and OpenCV only: ``export/imagefiles.py`` is a byte copy that the TensorFlow-free
runtime (``export/edge_predict.py``) imports, so a device reads files as ``unet-tf`` does.
"""

from pathlib import Path

import cv2
import tifffile

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


def read_image(path):
    """Read one file as an array: ``YX``, ``YXC`` or a stack ``ZYX``/``ZYXC`` (TIFF only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            image = tifffile.imread(path)
        except Exception as err:  # tifffile raises many types for a corrupt file
            raise ValueError(f"cannot read TIFF {path}: {err}") from None
        if image.size == 0:  # a corrupt header can also read as no pages at all
            raise ValueError(f"cannot read TIFF {path}: it holds no image data")
        return image
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot read image {path} (not a PNG/JPEG/BMP OpenCV can decode)")
    if image.ndim == 3:  # OpenCV reads BGR(A)
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return image
