"""Reading and writing images: TIFF (8/16-bit, multi-page stacks) and PNG/JPEG/BMP.

A folder of images and a folder of masks are paired by file stem (``cell_01.tif`` with
``cell_01.png``). Multi-page stacks such as ISBI 2012's ``train-volume.tif`` /
``train-labels.tif`` become one 2-D frame per page.
"""

import os
import tempfile
from pathlib import Path

import cv2
import tifffile

from .imagefiles import IMAGE_SUFFIXES, read_image


def _is_channels_last(array, path):
    if array.ndim != 3:
        return False
    if Path(path).suffix.lower() in (".tif", ".tiff"):
        with tifffile.TiffFile(path) as tif:
            return tif.series[0].axes[-1] in "SC"
    return True


def read_frames(path):
    """Read a file as a list of 2-D frames (``YX`` or ``YXC``): stacks give one per page."""
    array = read_image(path)
    if array.ndim == 2 or _is_channels_last(array, path):
        return [array]
    if array.ndim in (3, 4):
        return list(array)
    raise ValueError(f"{path}: expected a 2-D image or a stack of them, got shape {array.shape}")


def list_images(folder, what="images"):
    """Sorted image files of ``folder``; a clear error if it is missing or holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} files in {what} folder {folder}")
    return files


def load_pairs(images_dir, masks_dir):
    """Images and masks from two folders, matched by file stem.

    Returns ``(images, masks, names)``: lists of 2-D arrays and a name per frame (the stem, plus
    ``#page`` for stacks). Raises on unmatched names, frame-count or shape mismatches.
    """
    images = {p.stem: p for p in list_images(images_dir, "images")}
    masks = {p.stem: p for p in list_images(masks_dir, "masks")}
    missing_masks, missing_images = sorted(images.keys() - masks), sorted(masks.keys() - images)
    if missing_masks or missing_images:
        raise ValueError(
            f"images and masks are matched by file name: no mask for {missing_masks[:5]}, "
            f"no image for {missing_images[:5]} (in {images_dir} / {masks_dir})")
    out_images, out_masks, names = [], [], []
    for stem in sorted(images):
        frames, mask_frames = read_frames(images[stem]), read_frames(masks[stem])
        if len(frames) != len(mask_frames):
            raise ValueError(f"{images[stem]} has {len(frames)} frames but {masks[stem]} has "
                             f"{len(mask_frames)}")
        for page, (image, mask) in enumerate(zip(frames, mask_frames)):
            if mask.ndim != 2:
                raise ValueError(f"mask {masks[stem]} must be a label image (YX), "
                                 f"got shape {mask.shape}")
            if image.shape[:2] != mask.shape:
                raise ValueError(f"{images[stem]} is {image.shape[:2]} but its mask "
                                 f"{masks[stem]} is {mask.shape}")
            out_images.append(image)
            out_masks.append(mask)
            names.append(stem if len(frames) == 1 else f"{stem}#{page}")
    return out_images, out_masks, names


def check_writable(folder, what="output folder"):
    """Raise before any work if ``folder`` (existing or to be created) cannot be written."""
    folder = Path(folder)
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"{what} {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {folder} is not writable ({existing} does not allow it)")


def umask():
    """The process's umask, read without changing it where the OS tells (Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def apply_umask(path):
    """Give ``path`` the mode a plain ``open()``/``mkdir()`` would (0644/0755 under umask
    022): ``mkstemp``/``mkdtemp`` create private 0600/0700 entries, which a TF Serving container
    running as another user, or a lab-mate on a shared server, could not read."""
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask())


def write_atomically(path, write):
    """Call ``write(temporary_path)``, then rename it to ``path``: never a half-written file.

    ``write`` may create a file or a folder at the temporary path; either gets the permissions
    the umask gives new files and folders.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        apply_umask(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_image(path, array, overwrite=False):
    """Write ``array`` to ``path`` (TIFF via tifffile, else OpenCV) atomically.

    The file appears complete or not at all: it is written to a temporary sibling, then renamed.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (use --overwrite / overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp):
        if path.suffix.lower() in (".tif", ".tiff"):
            tifffile.imwrite(tmp, array, compression="zlib")
            return
        image = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
        if not cv2.imwrite(tmp, image):
            raise ValueError(f"OpenCV cannot write {array.dtype} {array.shape} as {path.suffix}")

    write_atomically(path, write)
    return path
