import numpy as np


def test_bundled_sample_is_real_dsb2018_nuclei(sample):
    image, instances = sample
    assert image.shape == instances.shape == (512, 512)
    assert image.dtype == np.uint16 and instances.dtype == np.uint16
    assert len(np.unique(instances)) - 1 == 125
    assert image[instances > 0].mean() > 2 * image[instances == 0].mean()  # nuclei are bright
