"""The napari plugin: Segment, Train, Retrain, Evaluate, cancel, errors.

With a display (``DISPLAY`` set; CI runs these under ``xvfb-run``, see .ci/run) the viewer is
the full ``napari.Viewer`` of ``make_napari_viewer``, its canvas drawn by OpenGL (Mesa llvmpipe
on Xvfb). Without one, the widgets are real Qt widgets (offscreen platform) on napari's
``ViewerModel`` (its layer list and ``add_*`` methods), with napari's Qt worker threads: all but
the canvas.
"""

import json
import os
import shutil
import warnings

import numpy as np
import pytest

pytest.importorskip("napari", reason="the napari plugin's tests need the extra: "
                    "pip install -e '.[cpu,test,napari]'")
pytest.importorskip("pytestqt", reason="needs pytest-qt, which the [napari] extra brings")

from napari.utils.notifications import notification_manager

from unet_tf.napari_plugin.widgets import (EvaluateWidget, SegmentWidget, TrainWidget,
                                           nuclei_sample)

WAIT = 300_000   # ms: a worker on a busy 2-core CI machine


def errors_shown(severity="ERROR"):
    return [str(n.message) for n in notification_manager.records
            if getattr(n, "severity", None) is not None and n.severity.name == severity]


@pytest.fixture
def viewer(qapp, request):
    if os.environ.get("DISPLAY"):
        viewer = request.getfixturevalue("make_napari_viewer")()
        # the window Xvfb's screen holds: at napari's default 954x600 the docked Segment
        # widget (a long tmp path in its model folder) left the canvas no width at all
        viewer.window._qt_window.resize(1400, 900)
    else:
        from napari.components import ViewerModel
        viewer = ViewerModel()
    for data, meta, kind in nuclei_sample():
        getattr(viewer, f"add_{kind}")(data, **meta)
    return viewer


def docked(viewer, widget_class):
    widget = widget_class(viewer)
    if hasattr(viewer, "window"):
        viewer.window.add_dock_widget(widget)
    widget.reset_choices()
    return widget


def test_manifest_validates_and_is_discovered():
    import npe2
    from importlib.resources import files
    manifest = npe2.PluginManifest.from_file(files("unet_tf.napari_plugin") / "napari.yaml")
    assert {w.display_name for w in manifest.contributions.widgets} == \
        {"Segment", "Train", "Evaluate"}
    manager = npe2.PluginManager.instance()
    manager.discover()
    assert manager.get_manifest("unet-tf").name == "unet-tf"  # found by its entry point


def test_segment_gives_labels_of_the_image_shape(viewer, qtbot, trained_folder):
    widget = docked(viewer, SegmentWidget)
    widget.image.value = viewer.layers["nuclei"]
    widget.model.value = str(trained_folder)
    widget.probabilities.value = True
    assert "depth 4" in widget.info.value
    widget.segment()
    qtbot.waitUntil(lambda: "nuclei [unet-tf]" in viewer.layers, timeout=WAIT)
    labels = viewer.layers["nuclei [unet-tf]"].data
    assert labels.shape == viewer.layers["nuclei"].data.shape
    assert 60 <= len(np.unique(labels)) - 1 <= 200          # 125 nuclei in the sample
    assert viewer.layers["nuclei probability [unet-tf]"].data.shape == labels.shape
    assert len(np.unique(viewer.layers["nuclei labels"].data)) == 126  # annotations untouched
    qtbot.waitUntil(lambda: widget.run.enabled, timeout=WAIT)
    if hasattr(viewer, "window"):   # a real viewer: its canvas draws the labels in colour
        # the labels add ~1.5 % of the window (seen: 0.032 against 0.017); a canvas that drew
        # nothing adds none
        assert coloured_share(viewer, show="nuclei [unet-tf]") > \
            coloured_share(viewer, show=None) + 0.005


def coloured_share(viewer, show, image="nuclei"):
    """The share of the window's pixels in colour with ``image`` and layer ``show`` visible (a
    grab of the window: napari's canvas-only screenshot is black while the window is hidden)."""
    for layer in viewer.layers:
        layer.visible = layer.name in (image, show)
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=False).astype(int)[..., :3]
    return (np.ptp(shot, axis=-1) > 30).mean()   # the grey image and the dark theme: R = G = B


def test_the_first_segment_trains_the_demo_model_then_segments(viewer, qtbot, trained_folder,
                                                                 tmp_path, monkeypatch):
    """With no model folder chosen, Segment trains the demo model once and then segments
    (the training is replaced by a copy of a trained folder, to keep the test short)."""
    from unet_tf.napari_plugin import widgets
    monkeypatch.setenv("UNET_TF_CACHE", str(tmp_path / "cache"))
    trained = []
    monkeypatch.setattr(widgets, "_train_demo_model", lambda folder: trained.append(
        shutil.copytree(trained_folder, folder, ignore=shutil.ignore_patterns("backup"))))
    widget = docked(viewer, SegmentWidget)
    widget.image.value = viewer.layers["nuclei"]
    assert widget.folder() == tmp_path / "cache" / "demo-model"
    widget.segment()
    qtbot.waitUntil(lambda: "nuclei [unet-tf]" in viewer.layers, timeout=WAIT)
    assert len(trained) == 1 and widget.segmented["folder"] == tmp_path / "cache" / "demo-model"
    qtbot.waitUntil(lambda: not widget.job.running, timeout=WAIT)
    assert widget.run.enabled


@pytest.mark.slow
def test_train_writes_a_folder_that_segment_uses_and_evaluate_scores(viewer, qtbot,
                                                                       tmp_path):
    train = docked(viewer, TrainWidget)
    train.image.value, train.labels.value = viewer.layers["nuclei"], viewer.layers["nuclei labels"]
    train.out.value = str(tmp_path / "model")
    train.steps.value = 3
    train.train()
    qtbot.waitUntil(lambda: train.trained is not None, timeout=WAIT)
    assert (tmp_path / "model" / "model.keras").is_file()
    assert "depth" in train.plan.value                      # the plan table was shown
    segment = docked(viewer, SegmentWidget)
    segment.image.value = viewer.layers["nuclei"]
    segment.model.value = str(train.trained)
    segment.segment()
    qtbot.waitUntil(lambda: "nuclei [unet-tf]" in viewer.layers, timeout=WAIT)
    evaluate = docked(viewer, EvaluateWidget)
    evaluate.truth.value = viewer.layers["nuclei labels"]
    evaluate.prediction.value = viewer.layers["nuclei [unet-tf]"]
    evaluate.evaluate()
    table = evaluate.table.to_dict("list")
    assert table["metric"][:2] == ["foreground_iou", "f1"] and len(table["value"]) == 10
    assert evaluate.metrics["true"] == 125
    assert "merged / split" in viewer.layers


@pytest.mark.slow
def test_train_takes_an_unannotated_label_and_says_when_nothing_was_learned(viewer, qtbot,
                                                                             tmp_path):
    image, labels = viewer.layers["nuclei"].data, viewer.layers["nuclei labels"].data
    viewer.add_image(image[:256, :256], name="corner")
    wrong = labels[256:, 256:].astype(np.int32)          # the annotations of another corner
    wrong[:, :32] = 7777                                 # a strip nobody annotated
    viewer.add_labels(wrong, name="wrong labels")
    train = docked(viewer, TrainWidget)
    train.image.value, train.labels.value = viewer.layers["corner"], viewer.layers["wrong labels"]
    train.out.value = str(tmp_path / "model")
    train.steps.value = 250
    train.ignore.value = 7777
    warnings = len(errors_shown("WARNING"))
    train.train()
    qtbot.waitUntil(lambda: len(errors_shown("WARNING")) > warnings, timeout=WAIT)
    assert "found almost none of the objects" in errors_shown("WARNING")[-1]
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["training"]["ignore_label"] == 7777
    assert config["plan"]["fingerprint"]["annotated_fraction"] == pytest.approx(1 - 32 / 256,
                                                                               abs=1e-3)
    qtbot.waitUntil(lambda: train.run.enabled, timeout=WAIT)


@pytest.fixture(scope="module")
def weak_folder(tmp_path_factory, sample):
    """A model trained for a few dozen steps: it finds the nuclei badly."""
    from unet_tf import UNet
    from unet_tf.config import TrainConfig
    image, instances = sample
    out = tmp_path_factory.mktemp("weak") / "weak"
    with warnings.catch_warnings():   # "after 12 training steps ... finds almost none"
        warnings.simplefilter("ignore", UserWarning)
        UNet.train(TrainConfig(out=str(out), tile_size=188, depth=4, filters=8, dropout=0.0,
                               epochs=1, steps_per_epoch=12, batch_size=2, optimizer="adam",
                               learning_rate=1e-3, class_weights=None, val_split=0.0),
                   [image[:, :256]], [instances[:, :256]], verbose=0)
    return out


@pytest.mark.slow
def test_correct_and_retrain_improves_the_half_it_never_saw(viewer, qtbot, weak_folder, sample):
    from unet_tf.metrics import evaluate
    truth = sample[1]
    segment = docked(viewer, SegmentWidget)
    segment.image.value = viewer.layers["nuclei"]
    segment.model.value = str(weak_folder)
    segment.segment()
    qtbot.waitUntil(lambda: segment.segmented is not None, timeout=WAIT)
    before = evaluate(truth[:, 272:], viewer.layers["nuclei [unet-tf]"].data[:, 272:])["f1"]
    layer = viewer.layers["nuclei [unet-tf]"]
    corrected = layer.data.copy()
    # The person fixes the left half only, painting the true nuclei as new labels (ids after
    # the segmentation's: the same id on both sides would make one object of two pieces).
    corrected[:, :256] = np.where(truth[:, :256] > 0, truth[:, :256] + corrected.max(), 0)
    layer.data = corrected
    segment.retrain_budget.value = "30s"
    segment.retrain()
    qtbot.waitUntil(lambda: not segment.retrain_job.running, timeout=WAIT)
    assert len(segment.round_folders) == 2, (errors_shown("WARNING") + errors_shown())[-2:]
    source, round1 = segment.round_folders
    assert source == weak_folder and round1 == weak_folder.parent / "weak-round1"
    assert str(segment.model.value) == str(round1)             # Segment uses the new round
    stored = json.loads((round1 / "config.json").read_text())
    assert stored["training"]["start_from"] == str(weak_folder)
    assert stored["training"]["ignore_label"] == int(corrected.max()) + 1   # the unchecked rest
    segment.segment()
    qtbot.waitUntil(lambda: not segment.job.running and segment.segmented["folder"] == round1,
                    timeout=WAIT)
    after = evaluate(truth[:, 272:], viewer.layers["nuclei [unet-tf]"].data[:, 272:])["f1"]
    print(f"F1@0.5 on the unseen right half: {before:.3f} -> {after:.3f}")
    assert after > before + 0.05, (before, after)
    segment.rounds.value = str(weak_folder)                    # back to an earlier round
    assert str(segment.model.value) == str(weak_folder)


def test_retrain_without_a_correction_says_so(viewer, qtbot, trained_folder):
    segment = docked(viewer, SegmentWidget)
    errors = len(errors_shown())
    segment.retrain()
    assert "segment an image first" in errors_shown()[-1]
    segment.image.value = viewer.layers["nuclei"]
    segment.model.value = str(trained_folder)
    segment.segment()
    qtbot.waitUntil(lambda: segment.segmented is not None, timeout=WAIT)
    qtbot.waitUntil(lambda: segment.run.enabled, timeout=WAIT)
    segment.retrain()
    assert "no correction in 'nuclei [unet-tf]'" in errors_shown()[-1]
    assert len(errors_shown()) == errors + 2 and not any(
        p.name.endswith("-round1") for p in trained_folder.parent.iterdir())


def test_evaluate_scores_a_perfect_and_a_merged_prediction(viewer):
    truth = viewer.layers["nuclei labels"].data
    merged = truth.copy()
    a, b = np.unique(truth)[1:3]
    merged[merged == b] = a                                   # two nuclei as one object
    viewer.add_labels(merged, name="merged")
    widget = docked(viewer, EvaluateWidget)
    widget.truth.value, widget.prediction.value = viewer.layers["nuclei labels"], \
        viewer.layers["merged"]
    widget.evaluate()
    assert widget.metrics["foreground_iou"] == 1.0
    assert widget.metrics["merged"] == 1 and widget.metrics["predicted"] == 124
    assert set(np.unique(viewer.layers["merged / split"].data)) == {0, 1}


@pytest.mark.slow
def test_cancel_stops_training_and_keeps_a_usable_model(viewer, qtbot, tmp_path):
    train = docked(viewer, TrainWidget)
    train.image.value, train.labels.value = viewer.layers["nuclei"], viewer.layers["nuclei labels"]
    train.out.value = str(tmp_path / "model")
    train.steps.value = 5000                                  # would take many minutes
    train.train()
    errors = len(errors_shown())
    qtbot.waitUntil(lambda: train.state["step"] >= 2 or len(errors_shown()) > errors,
                    timeout=WAIT)
    assert len(errors_shown()) == errors, errors_shown()[-1]
    train.cancel_button.native.click()                       # as a user clicks Cancel
    qtbot.waitUntil(lambda: train.trained is not None, timeout=WAIT)
    assert train.state["step"] < 100
    assert "cancelled" in train.loss.value
    from unet_tf import UNet
    assert UNet.from_folder(tmp_path / "model").segment(
        viewer.layers["nuclei"].data[:128, :128]).shape == (128, 128)


def test_bad_input_shows_a_message_and_changes_no_layer(viewer, qtbot, tmp_path,
                                                       trained_folder):
    from napari.components import ViewerModel
    empty = SegmentWidget(ViewerModel())                       # no image layer at all
    empty.reset_choices()
    empty.segment()
    assert "choose an image layer" in errors_shown()[-1]
    widget = docked(viewer, SegmentWidget)
    before = [layer.name for layer in viewer.layers]
    viewer.add_image(np.zeros((2, 3, 32, 32), np.uint8), name="4d")
    widget.reset_choices()
    widget.image.value = viewer.layers["4d"]
    widget.model.value = str(trained_folder)
    widget.segment()
    assert "got 4-D data" in errors_shown()[-1]
    broken = tmp_path / "broken"
    shutil.copytree(trained_folder, broken)
    (broken / "config.json").write_text("{not json")
    widget.image.value = viewer.layers["nuclei"]
    widget.model.value = str(broken)
    widget.segment()
    assert "config.json" in errors_shown()[-1]
    assert [layer.name for layer in viewer.layers] == before + ["4d"]
    evaluate = docked(viewer, EvaluateWidget)
    evaluate.truth.value = evaluate.prediction.value = viewer.layers["nuclei labels"]
    evaluate.evaluate()
    assert "two different" in errors_shown()[-1]
    train = docked(viewer, TrainWidget)                         # fine-tune from a non-model
    train.image.value, train.labels.value = viewer.layers["nuclei"], viewer.layers["nuclei labels"]
    train.out.value = str(tmp_path / "never")
    train.start_from.value = str(tmp_path)
    train.train()
    assert "cannot fine-tune" in errors_shown()[-1] and not (tmp_path / "never").exists()


# --------------------------------------------------------------------------- volumes

@pytest.fixture
def volume_viewer(viewer):
    from unet_tf.napari_plugin.widgets import nuclei_volume_sample
    for data, meta, kind in nuclei_volume_sample():
        getattr(viewer, f"add_{kind}")(data, **meta)
    return viewer


@pytest.mark.slow
def test_a_3d_net_segments_retrains_and_scores_a_volume(volume_viewer, qtbot,
                                                         trained_volume_folder, tmp_path,
                                                         monkeypatch):
    """Segment with a 3-D net gives 3-D labels; Evaluate matches objects across slices; one
    Retrain round fine-tunes the 3-D net on a corrected half at the layer's voxel size."""
    from unet_tf import planner
    from unet_tf.metrics import evaluate
    # The retrain plan raises a short budget to the shortest useful run (250 steps, ~1.3 s
    # each for this crop on 2 cores): 20 here, to keep CI short; the path is the same.
    monkeypatch.setattr(planner, "MIN_STEPS", 20)
    from unet_tf.samples import VOLUME_VOXEL_SIZE
    viewer = volume_viewer
    source = tmp_path / "net3d"
    shutil.copytree(trained_volume_folder, source)   # its rounds are written beside it
    # a 40x96x128 crop: its planned retraining tile (and step) is small enough for CI
    viewer.add_image(viewer.layers["nuclei 3-D"].data[:, :96, 128:], name="crop",
                     scale=VOLUME_VOXEL_SIZE)
    truth = viewer.layers["nuclei 3-D labels"].data[:, :96, 128:]
    viewer.add_labels(truth, name="crop labels", scale=VOLUME_VOXEL_SIZE)
    segment = docked(viewer, SegmentWidget)
    segment.image.value = viewer.layers["crop"]
    segment.model.value = str(source)
    assert "3-D net" in segment.info.value
    errors = len(errors_shown())
    segment.segment()
    qtbot.waitUntil(lambda: segment.segmented is not None or len(errors_shown()) > errors,
                    timeout=WAIT)
    assert len(errors_shown()) == errors, errors_shown()[-1]
    layer = viewer.layers["crop [unet-tf]"]
    assert layer.data.shape == truth.shape and layer.metadata["unet-tf"] == "volume"
    assert tuple(layer.scale) == pytest.approx(VOLUME_VOXEL_SIZE)
    assert layer.data.max() >= 5                      # a weak net, but it finds nuclei
    qtbot.waitUntil(lambda: segment.run.enabled, timeout=WAIT)

    score = docked(viewer, EvaluateWidget)
    score.truth.value = viewer.layers["crop labels"]
    score.prediction.value = layer
    assert score.volumes.value                        # a 3-D net's labels: objects in 3-D
    score.evaluate()
    assert score.metrics["true"] == len(np.unique(truth)) - 1         # not per slice
    assert score.metrics["f1"] == pytest.approx(evaluate(truth, layer.data)["f1"])
    assert viewer.layers["merged / split"].data.shape == truth.shape
    if hasattr(viewer, "window"):   # the real viewer draws the volume's labels in 3-D
        for name in ("nuclei", "nuclei labels", "nuclei 3-D", "nuclei 3-D labels"):
            viewer.layers.remove(name)   # reset_view fits hidden layers too: the crop alone
        viewer.dims.ndisplay = 3
        assert coloured_share(viewer, show="crop [unet-tf]", image="crop") > \
            coloured_share(viewer, show=None, image="crop") + 0.005
        viewer.dims.ndisplay = 2

    corrected = layer.data.copy()                     # the person fixes the left half
    corrected[:, :, :64] = np.where(truth[:, :, :64] > 0, truth[:, :, :64] + corrected.max(), 0)
    layer.data = corrected
    segment.retrain_budget.value = "30s"
    segment.retrain()
    qtbot.waitUntil(lambda: not segment.retrain_job.running, timeout=WAIT)
    assert len(segment.round_folders) == 2, (errors_shown("WARNING") + errors_shown())[-2:]
    round1 = segment.round_folders[1]
    stored = json.loads((round1 / "config.json").read_text())
    assert stored["training"]["start_from"] == str(source.resolve())
    assert stored["voxel_size"] == pytest.approx(list(VOLUME_VOXEL_SIZE))
    assert stored["training"]["ignore_label"] == int(corrected.max()) + 1
    segment.segment()
    qtbot.waitUntil(lambda: not segment.job.running and segment.segmented["folder"] == round1,
                    timeout=WAIT)
    assert viewer.layers["crop [unet-tf]"].data.shape == truth.shape


@pytest.mark.slow
def test_train_takes_a_volume_at_the_layers_voxel_size(volume_viewer, qtbot, tmp_path):
    viewer = volume_viewer
    crop = (slice(None), slice(0, 64), slice(0, 96))          # small: a short plan and tuning
    viewer.add_image(viewer.layers["nuclei 3-D"].data[crop], name="crop", scale=(1, 0.5, 0.5))
    viewer.add_labels(viewer.layers["nuclei 3-D labels"].data[crop], name="crop labels",
                      scale=(1, 0.5, 0.5))
    train = docked(viewer, TrainWidget)
    train.image.value = viewer.layers["crop"]
    train.labels.value = viewer.layers["crop labels"]
    train.out.value = str(tmp_path / "model")
    train.steps.value = 3
    train.volumes.value = True
    with warnings.catch_warnings():   # 3 steps learn nothing, and say so
        warnings.simplefilter("ignore", UserWarning)
        train.train()
        qtbot.waitUntil(lambda: train.trained is not None or not train.job.running,
                        timeout=WAIT)
    assert train.trained is not None, (errors_shown("WARNING") + errors_shown())[-2:]
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["voxel_size"] == [1.0, 0.5, 0.5]
    assert "voxel_size" in train.plan.value and "anisotropy 2" in train.plan.value


def test_volume_input_mistakes_are_explained(volume_viewer, trained_volume_folder,
                                             trained_folder, tmp_path):
    viewer = volume_viewer
    segment = docked(viewer, SegmentWidget)
    segment.image.value = viewer.layers["nuclei"]               # 2-D image, 3-D net
    segment.model.value = str(trained_volume_folder)
    segment.segment()
    assert "expected a 3-D (ZYX) image" in errors_shown()[-1]
    viewer.layers["nuclei 3-D"].scale = (2.0, 0.26, 0.26)       # coarser z than trained at
    segment.image.value = viewer.layers["nuclei 3-D"]
    warned = len(errors_shown("WARNING"))
    segment.segment()
    assert "voxel size 2x0.26x0.26" in errors_shown("WARNING")[warned]
    segment.job.stop()
    train = docked(viewer, TrainWidget)                          # 2-D net to fine-tune a volume
    train.image.value = viewer.layers["nuclei 3-D"]
    train.labels.value = viewer.layers["nuclei 3-D labels"]
    train.volumes.value = True
    train.start_from.value = str(trained_folder)
    train.out.value = str(tmp_path / "never")
    train.train()
    assert "it is a 2-D net, these are volumes" in errors_shown()[-1]
    train.labels.value = viewer.layers["nuclei labels"]          # 2-D labels for a volume
    train.start_from.value = ""
    train.train()
    assert "expected a 3-D (ZYX) labels layer" in errors_shown()[-1]
    assert not (tmp_path / "never").exists()
