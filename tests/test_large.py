"""Beyond one machine's memory: chunked prediction, OME-Zarr in and out, Dask workers, LiteRT."""

import shutil
import stat

import numpy as np
import pytest

LARGE = "needs the extra: pip install -e '.[cpu,large]' ([test] brings it too)"
zarr = pytest.importorskip("zarr", reason=LARGE)
pytest.importorskip("ome_zarr", reason=LARGE)
pytest.importorskip("distributed", reason=LARGE)

from unet_tf import chunked, stitching
from unet_tf.io import write_image
from unet_tf.metrics import match_instances
from unet_tf.omezarr import LazyImage, save_image
from unet_tf.unet import UNet
from conftest import run_cli


@pytest.fixture(scope="module")
def folder(trained_folder, tmp_path_factory):
    """A copy of the session's trained folder without the exports other tests made in it."""
    copy = tmp_path_factory.mktemp("large") / "model"
    shutil.copytree(trained_folder, copy, ignore=shutil.ignore_patterns("export"))
    return copy


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as local, Client(local) as client:
        yield client


def mosaic(sample, shape):
    """The sample nuclei image repeated (mirrored, so no seams) to ``shape``."""
    image = sample[0]
    tile = np.block([[image, image[:, ::-1]], [image[::-1], image[::-1, ::-1]]])
    reps = (-(-shape[0] // tile.shape[0]), -(-shape[1] // tile.shape[1]))
    return np.tile(tile, reps)[:shape[0], :shape[1]]


@pytest.mark.slow
def test_chunks_on_two_workers_equal_one_pass_over_the_whole_image(folder, cluster, sample):
    image = mosaic(sample, (2048, 3000))
    expected = UNet.from_folder(folder).predict(image)
    lazy = chunked.predict_lazy(folder, image, chunk=1024)
    assert lazy.shape == (2048, 3000, 2) and lazy.numblocks[:2] == (2, 3)
    result = cluster.compute(lazy).result()
    np.testing.assert_allclose(result, expected, atol=1e-5)


@pytest.mark.slow
def test_ome_zarr_round_trip_labels_match_whole_image_segmentation(folder, sample, tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    image = mosaic(sample, (1000, 1300))
    source = save_image(tmp_path / "in.ome.zarr", image, chunk=256,
                        pixel_size={"y": 0.65, "x": 0.65})
    summary = chunked.segment_to_zarr(folder, source, tmp_path / "out.ome.zarr", chunk=256,
                                      probabilities=True)
    assert summary["chunks"] == 4 * 6 and summary["resumed"] == 0
    nodes = {node.zarr.path.rstrip("/").split("/")[-1]: node
             for node in Reader(parse_url(str(tmp_path / "out.ome.zarr")))()}
    assert nodes["out.ome.zarr"].data[0].shape == (1, 1000, 1300)
    np.testing.assert_array_equal(np.asarray(nodes["out.ome.zarr"].data[0][0]), image)
    labels = np.asarray(nodes["instances"].data[0])
    stored = zarr.open_group(str(tmp_path / "out.ome.zarr"))
    assert stored["labels"].attrs["labels"] == ["instances"]
    assert "image-label" in stored["labels/instances"].attrs
    assert len(nodes["instances"].data) >= 3                          # a pyramid
    scale = nodes["instances"].metadata["coordinateTransformations"][0][0]["scale"]
    assert scale == [0.65, 0.65]
    whole = UNet.from_folder(folder).segment(image)
    match = match_instances(whole, labels)
    assert labels.max() == len(np.unique(labels)) - 1 == whole.max() > 50
    assert match["per_threshold"][0.5]["f1"] > 0.99, match["per_threshold"][0.5]
    probabilities = zarr.open_group(str(tmp_path / "out.ome.zarr"))["probabilities/0"]
    assert probabilities.shape == (2, 1000, 1300)
    np.testing.assert_allclose(np.moveaxis(probabilities[:], 0, -1),
                               UNet.from_folder(folder).predict(image), atol=1e-5)
    mode = (tmp_path / "out.ome.zarr" / "labels" / "instances" / "0" / ".zarray").stat().st_mode
    assert mode & stat.S_IROTH                       # readable by others, like any new file
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.slow
def test_a_killed_run_resumes_and_gives_the_same_labels(folder, sample, tmp_path):
    image = mosaic(sample, (768, 768))
    reference = chunked.segment_to_zarr(folder, image, tmp_path / "reference.ome.zarr",
                                        chunk=256)

    def killed_after_four(done, total):
        if done == 4:
            raise KeyboardInterrupt

    out = tmp_path / "out.ome.zarr"
    with pytest.raises(KeyboardInterrupt):
        chunked.segment_to_zarr(folder, image, out, chunk=256, progress=killed_after_four)
    assert not out.exists() and (tmp_path / ".out.ome.zarr.partial").is_dir()
    with pytest.raises(FileExistsError, match="other settings"):
        chunked.segment_to_zarr(folder, image, out, chunk=128)
    seen = []
    summary = chunked.segment_to_zarr(folder, image, out, chunk=256,
                                      progress=lambda done, total: seen.append(done))
    assert summary["resumed"] == 4 and seen == [4, 5, 6, 7, 8, 9]   # first: the count resumed
    assert summary["objects"] == reference["objects"]
    np.testing.assert_array_equal(zarr.open_group(str(out))["labels/instances/0"][:],
                                  zarr.open_group(str(tmp_path / "reference.ome.zarr"))
                                  ["labels/instances/0"][:])


@pytest.mark.slow
def test_on_a_cluster_a_killed_run_resumes_and_equals_one_process(folder, cluster, sample,
                                                                   tmp_path):
    image = mosaic(sample, (768, 768))
    chunked.segment_to_zarr(folder, image, tmp_path / "here.ome.zarr", chunk=256)
    here = zarr.open_group(str(tmp_path / "here.ome.zarr"))
    source = save_image(tmp_path / "in.ome.zarr", image, chunk=256)

    def killed_after_three(done, total):
        if done == 3:
            raise KeyboardInterrupt

    out = tmp_path / "out.ome.zarr"
    with pytest.raises(KeyboardInterrupt):
        chunked.segment_to_zarr(folder, source, out, chunk=256, client=cluster,
                                progress=killed_after_three)
    assert not out.exists()
    summary = chunked.segment_to_zarr(folder, source, out, chunk=256, client=cluster)
    assert summary["chunks"] == 9 and summary["resumed"] >= 3
    # an array (scattered to the workers once) gives the same as a file
    chunked.segment_to_zarr(folder, image, tmp_path / "array.ome.zarr", chunk=256,
                            client=cluster)
    for result in (out, tmp_path / "array.ome.zarr"):
        there = zarr.open_group(str(result))
        for level in ("0", "1"):       # level 1 of the pyramid was built on the workers
            np.testing.assert_array_equal(there[f"labels/instances/{level}"][:],
                                          here[f"labels/instances/{level}"][:])


def test_stitching_joins_cut_objects_and_keeps_touching_ones_apart():
    """Chunks labelled with context (each numbering its objects its own way) are joined
    back into the global objects, including two that touch exactly along a chunk border."""
    truth = np.zeros((64, 64), np.uint32)
    truth[10:22, 28:40] = 1             # crosses the vertical border at x = 32
    truth[26:32, 5:20] = 2              # ends at the horizontal border y = 32 ...
    truth[32:40, 5:20] = 3              # ... where this one starts: touching, two objects
    truth[40:60, 40:60] = 4             # crosses both borders? no: inside the last chunk
    truth[28:38, 28:38] = 5             # crosses both borders (a corner)
    chunk, halo = 32, 8
    records = {}
    for i, j, (top, left, h, w) in chunked.chunk_windows(truth.shape, chunk):
        t0, l0 = max(0, top - halo), max(0, left - halo)
        view = truth[t0:top + h + halo, l0:left + w + halo]
        ids = np.unique(view)
        renumbered = np.searchsorted(ids, view).astype(np.uint32) * 7 % 101  # other ids
        renumbered[view == 0] = 0
        core = ((top - t0, top - t0 + h), (left - l0, left - l0 + w))
        inside = renumbered[slice(*core[0]), slice(*core[1])]
        records[(i, j)] = {"present": np.unique(inside), "top": renumbered.max(),
                           "core": inside, **stitching.edge_lines(renumbered, core)}
    tables = stitching.stitch(records)
    stitched = np.block([[tables[(i, j)][records[(i, j)]["core"]] for j in range(2)]
                         for i in range(2)])
    assert stitched.max() == 5
    for value in range(1, 6):
        assert len(np.unique(stitched[truth == value])) == 1
    assert len(np.unique(stitched[truth > 0])) == 5


@pytest.mark.slow
def test_cli_spreads_a_folder_over_an_existing_cluster(folder, cluster, sample, tmp_path):
    image = sample[0]
    for name, rows in (("a", slice(0, 256)), ("b", slice(256, 512)), ("c", slice(100, 400))):
        write_image(tmp_path / "in" / f"{name}.tif", image[rows])
    spread = run_cli("predict", folder, tmp_path / "in", "--out", tmp_path / "spread",
                     "--scheduler", cluster.scheduler.address, "--quiet")
    assert spread.returncode == 0, spread.stderr
    assert "runtime: Keras" in spread.stdout
    local = run_cli("predict", folder, tmp_path / "in", "--out", tmp_path / "local", "--quiet")
    assert local.returncode == 0, local.stderr
    import tifffile
    for name in "abc":
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "spread" / f"{name}.tif"),
                                      tifffile.imread(tmp_path / "local" / f"{name}.tif"))
        assert (tmp_path / "spread" / f"{name}_overlay.png").is_file()


def test_litert_runtime_agrees_with_keras(folder, sample):
    from unet_tf.exporters import export_model
    with pytest.raises(FileNotFoundError, match="tflite"):
        UNet.from_folder(folder, "litert")
    export_model(folder, "tflite", tile_size=188)
    image = mosaic(sample, (700, 900))
    keras_result = chunked.predict_lazy(folder, image, chunk=512).compute(scheduler="sync")
    litert = UNet.from_folder(folder, "litert")
    assert litert.description.startswith("LiteRT model_float32.tflite (tile 188")
    litert_result = chunked.predict_lazy(folder, image, chunk=512,
                                         runtime="litert").compute(scheduler="sync")
    a, b = keras_result.argmax(-1) > 0, litert_result.argmax(-1) > 0
    assert (a & b).sum() / (a | b).sum() > 0.999
    np.testing.assert_allclose(litert_result, keras_result, atol=1e-3)
    # the one predictor: UNet with the LiteRT runtime on the whole image, as the chunks gave
    np.testing.assert_allclose(litert.predict(image), litert_result, atol=1e-5)
    with pytest.raises(ValueError, match="188x188 tiles only"):
        litert.predict(image, tile_size=252)


def test_large_input_errors_are_clear(folder, tmp_path):
    stack = zarr.open_group(str(tmp_path / "stack.ome.zarr"), mode="w", zarr_format=2)
    stack.create_array("0", shape=(3, 64, 64), dtype="uint16")
    stack.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "t", "type": "time"}, {"name": "y", "type": "space"},
        {"name": "x", "type": "space"}], "datasets": [{"path": "0"}]}]
    with pytest.raises(ValueError, match="select a single t"):
        LazyImage(tmp_path / "stack.ome.zarr")
    rgb = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="3 channels, the model expects 1"):
        chunked.segment_to_zarr(folder, rgb, tmp_path / "rgb.ome.zarr")
    result = run_cli("predict", folder, tmp_path / "stack.ome.zarr", "--out",
                     tmp_path / "o.ome.zarr")
    assert result.returncode == 2 and "select a single t" in result.stderr
    assert not (tmp_path / "o.ome.zarr").exists()
    write_image(tmp_path / "a.tif", np.zeros((64, 64), np.uint8))
    result = run_cli("predict", folder, tmp_path / "a.tif", "--out", tmp_path / "p",
                     "--runtime", "litert", "--tile-size", 300)
    assert result.returncode == 2 and "--tile-size/--batch-size apply to Keras" in result.stderr
    assert not (tmp_path / "p").exists()
    result = run_cli("predict", folder, tmp_path / "a.tif", "--out", tmp_path / "p",
                     "--variant", "int8")
    assert result.returncode == 2 and "add --runtime litert" in result.stderr
