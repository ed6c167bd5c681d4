"""From network output to what a person uses: instance labels, files, overlays."""

import cv2
import numpy as np
from scipy import ndimage as ndi

from .images import as_yxc, normalize


def label_image(class_labels, num_classes=2):
    """What ``predict`` writes: instance labels (uint16/int32, connected components of the
    foreground) for a two-class net, class ids (uint8) for more classes."""
    class_labels = np.asarray(class_labels)
    if num_classes > 2:
        return class_labels.astype(np.uint8 if num_classes <= 256 else np.uint16)
    instances, count = ndi.label(class_labels > 0)
    return instances.astype(np.uint16 if count < 2 ** 16 else np.int32)


def overlay(image, labels, color=(255, 64, 0)):
    """RGB uint8 picture of ``image`` (gray, percentile-stretched) with label outlines drawn."""
    gray = as_yxc(image)
    gray = gray.mean(-1) if gray.shape[2] != 1 else gray[..., 0]
    gray = (np.clip(normalize(gray), 0, 1) * 255).astype(np.uint8)
    picture = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    labels = np.asarray(labels)
    # Outlines where a pixel's label differs from a neighbour's: touching instances stay apart.
    edges = (labels > 0) & ((ndi.grey_erosion(labels, size=3) != labels)
                            | (ndi.grey_dilation(labels, size=3) != labels))
    picture[edges] = color
    return picture
