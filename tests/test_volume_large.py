"""Volumes beyond memory: a 3-D net's labels of a ZYX OME-Zarr chunk by chunk, on Dask workers,
joined across chunk faces, resumable, written as NGFF with the voxel size (issue: volumes at
scale and on devices)."""

import numpy as np
import pytest

LARGE = "needs the extra: pip install -e '.[cpu,large]' ([test] brings it too)"
zarr = pytest.importorskip("zarr", reason=LARGE)
pytest.importorskip("ome_zarr", reason=LARGE)
pytest.importorskip("distributed", reason=LARGE)

from unet_tf import stitching  # noqa: E402
from unet_tf.cli import main as cli_main  # noqa: E402
from unet_tf.omezarr import open_volume, save_volume  # noqa: E402
from unet_tf.samples import VOLUME_VOXEL_SIZE, load_sample_volume  # noqa: E402
from unet_tf.unet import UNet  # noqa: E402
from unet_tf.volume_chunked import segment_volume_to_zarr, volume_chunk_windows  # noqa: E402

CHUNK = (16, 64, 96)   # small chunks: the sample's nuclei cross their faces and corners


@pytest.fixture(scope="module")
def volume():
    return load_sample_volume()[0]


@pytest.fixture(scope="module")
def in_memory(trained_volume_folder, volume):
    unet = UNet.from_folder(trained_volume_folder)
    probabilities = unet.predict(volume)
    return probabilities, unet.postprocess(probabilities)


def faces_crossed(labels, chunk):
    """Objects of ``labels`` that lie in more than one chunk."""
    owner = np.zeros(labels.shape, np.int32)
    for n, (_, starts, sizes) in enumerate(volume_chunk_windows(labels.shape, chunk)):
        owner[tuple(slice(s, s + k) for s, k in zip(starts, sizes))] = n
    return [k for k in range(1, labels.max() + 1) if len(np.unique(owner[labels == k])) > 1]


def test_two_workers_give_in_memory_prediction_and_one_label_per_cut_object(
        trained_volume_folder, volume, in_memory, tmp_path):
    source = save_volume(tmp_path / "in.ome.zarr", volume, chunk=(16, 64, 64),
                         voxel_size=VOLUME_VOXEL_SIZE)
    out = tmp_path / "out.ome.zarr"
    assert cli_main(["predict", str(trained_volume_folder), str(source), "--out", str(out),
                     "--chunk", ",".join(map(str, CHUNK)), "--workers", "2", "--probabilities",
                     "--quiet"]) == 0
    probabilities, labels = in_memory
    result = zarr.open_group(str(out), mode="r")
    np.testing.assert_allclose(np.moveaxis(result["probabilities/0"][:], 0, -1), probabilities,
                               atol=1e-5)
    chunked = result["labels/instances/0"][:]
    crossing = faces_crossed(labels, CHUNK)
    assert len(crossing) >= 5                      # the test means something
    for k in crossing:                             # one label covers each cut object
        ids, counts = np.unique(chunked[labels == k], return_counts=True)
        assert counts.max() >= 0.95 * counts.sum(), (k, ids, counts)
    assert abs(int(chunked.max()) - int(labels.max())) <= 2   # ids 1..N, near the same N
    assert set(np.unique(chunked)) == set(range(int(chunked.max()) + 1))
    assert np.array_equal(result["0"][0], volume)


def test_stitching_joins_objects_cut_by_faces_edges_and_corners_in_3d():
    """Chunks labelled with context, each numbering its objects its own way, are joined back
    into the global objects, two touching exactly along a face kept apart."""
    truth = np.zeros((32, 48, 48), np.uint32)
    truth[4:12, 10:20, 20:30] = 1          # crosses the x face at 24
    truth[10:16, 2:10, 2:10] = 2           # ends at the z face 16 ...
    truth[16:24, 2:10, 2:10] = 3           # ... where this one starts: touching, two objects
    truth[12:20, 20:28, 20:28] = 4         # crosses all three faces: a corner
    truth[20:30, 30:44, 30:44] = 5         # inside one chunk
    chunk, halo = (16, 24, 24), 6
    records = {}
    for index, starts, sizes in volume_chunk_windows(truth.shape, chunk):
        lower = [max(0, s - halo) for s in starts]
        box = tuple(slice(lo, s + k + halo) for lo, s, k in zip(lower, starts, sizes))
        view = truth[box]
        renumbered = (np.searchsorted(np.unique(view), view) * 7 % 101).astype(np.uint32)
        renumbered[view == 0] = 0
        core = [(s - lo, s - lo + k) for s, lo, k in zip(starts, lower, sizes)]
        inside = renumbered[tuple(slice(*c) for c in core)]
        records[index] = {"present": np.unique(inside), "top": renumbered.max(), "core": inside,
                          "at": starts, **stitching.edge_lines(renumbered, core)}
    tables = stitching.stitch({k: {n: v for n, v in r.items() if n not in ("core", "at")}
                               for k, r in records.items()})
    stitched = np.zeros_like(truth)
    for index, record in records.items():
        box = tuple(slice(s, s + n) for s, n in zip(record["at"], record["core"].shape))
        stitched[box] = tables[index][record["core"]]
    assert stitched.max() == 5
    for value in range(1, 6):
        assert len(np.unique(stitched[truth == value])) == 1
    assert len(np.unique(stitched[truth > 0])) == 5


def test_a_killed_run_resumes_and_gives_the_same_labels(trained_volume_folder, volume, tmp_path):
    reference = segment_volume_to_zarr(trained_volume_folder, volume, tmp_path / "ref.ome.zarr",
                                       chunk=(40, 64, 128))

    def killed_after_three(done, total):
        if done == 3:
            raise KeyboardInterrupt

    out = tmp_path / "out.ome.zarr"
    with pytest.raises(KeyboardInterrupt):
        segment_volume_to_zarr(trained_volume_folder, volume, out, chunk=(40, 64, 128),
                               progress=killed_after_three)
    assert not out.exists() and (tmp_path / ".out.ome.zarr.partial").is_dir()
    with pytest.raises(FileExistsError, match="other settings"):
        segment_volume_to_zarr(trained_volume_folder, volume, out, chunk=(40, 64, 64))
    seen = []
    summary = segment_volume_to_zarr(trained_volume_folder, volume, out, chunk=(40, 64, 128),
                                     progress=lambda done, total: seen.append(done))
    assert summary["resumed"] == 3 and seen == [3, 4]     # 4 chunks; the first 3 kept
    assert summary["objects"] == reference["objects"]
    np.testing.assert_array_equal(zarr.open_group(str(out))["labels/instances/0"][:],
                                  zarr.open_group(str(tmp_path / "ref.ome.zarr"))
                                  ["labels/instances/0"][:])


def test_ngff_metadata_carries_the_voxel_size_and_pyramids_keep_a_coarse_z(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    rng = np.random.default_rng(0)
    coarse = save_volume(tmp_path / "coarse.ome.zarr", rng.integers(0, 9, (6, 600, 520), np.uint16),
                         chunk=(6, 128, 128), voxel_size=(1.0, 0.25, 0.25))
    even = save_volume(tmp_path / "even.ome.zarr", rng.integers(0, 9, (64, 600, 520), np.uint16),
                       chunk=(32, 128, 128), voxel_size=(0.5, 0.5, 0.5))
    for path, shapes, scales in (
            (coarse, [(1, 6, 600, 520), (1, 6, 300, 260), (1, 6, 150, 130)],
             [[1, 1.0, 0.25, 0.25], [1, 1.0, 0.5, 0.5], [1, 1.0, 1.0, 1.0]]),
            (even, [(1, 64, 600, 520), (1, 32, 300, 260), (1, 16, 150, 130)],
             [[1, 0.5, 0.5, 0.5], [1, 1.0, 1.0, 1.0], [1, 2.0, 2.0, 2.0]])):
        node = next(iter(Reader(parse_url(str(path)))()))      # read back by ome-zarr
        assert [tuple(d.shape) for d in node.data] == shapes
        transforms = node.metadata["coordinateTransformations"]
        assert [t[0]["scale"] for t in transforms] == scales
        assert [a["name"] for a in node.metadata["axes"]] == ["c", "z", "y", "x"]
    assert open_volume(coarse).voxel_size() == (1.0, 0.25, 0.25)


def test_volume_inputs_that_cannot_work_are_refused_before_any_work(
        trained_folder, trained_volume_folder, volume, tmp_path, capsys):
    image = save_volume(tmp_path / "in.ome.zarr", volume[:8], chunk=(8, 64, 64))
    with pytest.raises(ValueError, match="is a 2-D net"):
        segment_volume_to_zarr(trained_folder, image, tmp_path / "a.ome.zarr")
    with pytest.raises(ValueError, match="at least the pooling periods 4x4x4"):
        segment_volume_to_zarr(trained_volume_folder, image, tmp_path / "b.ome.zarr",
                               chunk=(2, 64, 64))
    assert cli_main(["predict", str(trained_volume_folder), str(image), "--out",
                     str(tmp_path / "c.ome.zarr"), "--chunk", "8,64"]) == 2
    assert "--chunk must be three comma-separated values" in capsys.readouterr().err
    tif = tmp_path / "stack.tif"
    import tifffile
    tifffile.imwrite(tif, volume[:8])
    assert cli_main(["predict", str(trained_volume_folder), str(tif), "--out",
                     str(tmp_path / "d"), "--workers", "2"]) == 2
    assert "give one volume and --out NAME.ome.zarr" in capsys.readouterr().err
    assert not any(tmp_path.glob("?.ome.zarr")) and not (tmp_path / "d").exists()
