"""Elastic deformation of a 572x572 image + label pair: ours (cv2.remap) vs the peers' way.

Baseline: the `elasticdeform` package (0.5.1, what peers use) when it imports; it is built for
numpy 1.x and fails under numpy 2, in which case the same algorithm in SciPy is the baseline
(coarse 3x3 grid -> ndi.zoom(order=3) -> ndi.map_coordinates, bicubic image, nearest labels).
Both run on one thread (OpenCV's own threading is switched off) so the ratio compares algorithms.

A second case deforms a 132^3 volume + labels (elastic_deform_3d: OpenCV per slice, linear
in z) against SciPy's 3-D map_coordinates (order 3 image, order 0 labels) on the same kind of
field (issue 30 asks for >= 10x).

    python benchmarks/bench_elastic.py [--quick]
"""

import argparse

import cv2
import numpy as np
from scipy import ndimage as ndi

from _timing import best_time, report
from unet_tf.augment import displacement_field_3d, elastic_deform, elastic_deform_3d
from unet_tf.samples import load_sample


def scipy_elastic(image, labels, rng, grid=3, sigma=10.0):
    coarse = rng.normal(0, sigma, (2, grid, grid))
    zoom = [s / grid for s in image.shape]
    field = [ndi.zoom(c, zoom, order=3) for c in coarse]
    coords = np.mgrid[:image.shape[0], :image.shape[1]].astype(np.float64)
    coords = [coords[0] + field[0], coords[1] + field[1]]
    return (ndi.map_coordinates(image, coords, order=3, mode="mirror"),
            ndi.map_coordinates(labels, coords, order=0, mode="mirror"))


def baseline():
    try:
        import elasticdeform
        return "elasticdeform package", lambda image, labels, rng: elasticdeform.deform_random_grid(
            [image, labels], sigma=10, points=3, order=[3, 0], mode="mirror")
    except Exception as err:  # ImportError, or numpy 2 ABI errors raised at import
        print(f"elasticdeform unavailable ({type(err).__name__}: {str(err)[:80]}); "
              "baseline = the same algorithm in SciPy")
        return "scipy map_coordinates", scipy_elastic


def scipy_elastic_3d(volume, labels, rng):
    field = displacement_field_3d(volume.shape, rng=rng)
    coords = np.mgrid[tuple(slice(0, n) for n in volume.shape)].astype(np.float32)
    coords = [c + f for c, f in zip(coords, field)]
    return (ndi.map_coordinates(volume, coords, order=3, mode="mirror"),
            ndi.map_coordinates(labels, coords, order=0, mode="mirror"))


def balls_volume(size=132, count=40, seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:size, :size, :size]
    labels = np.zeros((size,) * 3, np.uint16)
    for label in range(1, count + 1):
        c, r = rng.integers(10, size - 10, 3), rng.integers(5, 12)
        labels[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r] = label
    volume = (labels > 0) + rng.normal(0, 0.2, labels.shape)
    return volume.astype(np.float32), labels


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    repeat = 3 if parser.parse_args().quick else 10
    image, labels = load_sample()
    image = np.pad(image, 30, mode="reflect")[:572, :572].astype(np.float32)
    labels = np.pad(labels, 30, mode="reflect")[:572, :572]
    cv2.setNumThreads(1)
    name, theirs = baseline()
    rng = np.random.default_rng(0)
    base = best_time(lambda: theirs(image, labels, rng), repeat)
    ours = best_time(lambda: elastic_deform(image, labels, rng=rng), 3 * repeat)
    report("elastic_deform 572x572 image+labels", name, base, ours)

    volume, balls = balls_volume()
    base = best_time(lambda: scipy_elastic_3d(volume, balls, rng), max(1, repeat // 3))
    ours = best_time(lambda: elastic_deform_3d(volume, balls, rng=rng), repeat)
    report("elastic_deform_3d 132^3 volume+labels", "scipy map_coordinates order 3", base, ours)


if __name__ == "__main__":
    main()
