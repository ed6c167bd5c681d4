import numpy as np
import pytest
import tifffile

from unet_tf.io import load_pairs, read_frames, write_image


def test_pairs_by_stem_with_tiff_png_and_stacks(tmp_path, sample):
    image, instances = sample
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    write_image(tmp_path / "img" / "a.tif", image)
    write_image(tmp_path / "msk" / "a.png", ((instances > 0) * 255).astype(np.uint8))
    tifffile.imwrite(tmp_path / "img" / "stack.tif", np.stack([image[:64, :64]] * 3), photometric="minisblack")
    tifffile.imwrite(tmp_path / "msk" / "stack.tif", np.stack([instances[:64, :64]] * 3), photometric="minisblack")
    images, masks, names = load_pairs(tmp_path / "img", tmp_path / "msk")
    assert names == ["a", "stack#0", "stack#1", "stack#2"]
    np.testing.assert_array_equal(images[0], image)
    assert images[0].dtype == np.uint16 and masks[0].max() == 255
    assert images[1].shape == (64, 64)


def test_rgb_tiff_is_one_frame(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    frames = read_frames(tmp_path / "rgb.tif")
    assert len(frames) == 1 and frames[0].shape == (20, 30, 3)


def test_clear_errors(tmp_path, sample):
    image, instances = sample
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    with pytest.raises(FileNotFoundError, match="no .* files in images folder"):
        load_pairs(tmp_path / "img", tmp_path / "msk")
    with pytest.raises(FileNotFoundError, match="masks folder not found"):
        write_image(tmp_path / "img" / "a.tif", image)
        load_pairs(tmp_path / "img", tmp_path / "nope")
    write_image(tmp_path / "msk" / "b.tif", instances)
    with pytest.raises(ValueError, match=r"no mask for \['a'\], no image for \['b'\]"):
        load_pairs(tmp_path / "img", tmp_path / "msk")
    write_image(tmp_path / "msk" / "a.tif", instances[:100])
    (tmp_path / "msk" / "b.tif").unlink()
    with pytest.raises(ValueError, match=r"is \(512, 512\) but its mask"):
        load_pairs(tmp_path / "img", tmp_path / "msk")
    (tmp_path / "img" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        read_frames(tmp_path / "img" / "bad.png")


def test_write_is_atomic_and_never_overwrites(tmp_path):
    path = write_image(tmp_path / "x.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_image(path, np.ones((4, 4), np.uint8))
    write_image(path, np.ones((4, 4), np.uint8), overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
