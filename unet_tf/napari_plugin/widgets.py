"""The napari widgets: Segment, Train, Evaluate, and the nuclei samples (2-D and 3-D).

A 3-D layer is a stack of 2-D frames for a 2-D net (as the CLI's ``--axes TYX``) and a volume
for a 3-D net: Segment follows the model; Train and Evaluate have a "volumes" switch. A volume's
voxel size is its layer's scale (napari's default scale, all 1, counts as unset: a model's own
voxel size is used then).

Long work runs in a worker thread (``napari.qt.threading``), so the viewer stays responsive; a
progress bar follows it and Cancel stops it at the next chunk (Segment) or training step
(Train). Errors appear in napari's notifications with the CLI's one-line messages, and change
no layer. Needs the ``[napari]`` extra.
"""

import os
import threading
import time
from pathlib import Path

import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, Label, LineEdit,
                              ProgressBar, PushButton, SpinBox, Table, TextEdit)
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning

from unet_tf.config import NothingLearned   # unet_tf's pure modules: napari starts without
from unet_tf.errors import USER_ERRORS      # TensorFlow, which the first prediction loads
from unet_tf.volume_sizes import voxel_text

SEGMENT_CHUNK = 1024    # pixels per side predicted between progress updates / cancel checks


def demo_model_folder():
    """Where the bundled demo model is cached (``UNET_TF_CACHE``, default ~/.cache/unet-tf)."""
    cache = os.environ.get("UNET_TF_CACHE") or Path.home() / ".cache" / "unet-tf"
    return Path(cache) / "demo-model"


def nuclei_sample():
    """napari sample data: the bundled nuclei image and its instance labels."""
    from unet_tf.samples import load_sample
    image, labels = load_sample()
    return [(image, {"name": "nuclei"}, "image"),
            (labels.astype(np.int32), {"name": "nuclei labels"}, "labels")]


def nuclei_volume_sample():
    """napari sample data: the bundled confocal nuclei volume and its instance labels, scaled
    by their voxel size (um), so that napari's 3-D view shows them in proportion."""
    from unet_tf.samples import VOLUME_VOXEL_SIZE, load_sample_volume
    volume, labels = load_sample_volume()
    scale = {"scale": VOLUME_VOXEL_SIZE}
    return [(volume, {"name": "nuclei 3-D", **scale}, "image"),
            (labels.astype(np.int32), {"name": "nuclei 3-D labels", **scale}, "labels")]


def voxel_size_of(layer, model_voxel_size=None):
    """A volume layer's voxel size ``(z, y, x)``: its scale, or, where napari's default (all 1)
    says nobody set it, ``model_voxel_size`` (what a model was trained at) if given."""
    scale = tuple(float(v) for v in layer.scale[-3:])
    if model_voxel_size is not None and all(v == 1.0 for v in scale):
        return tuple(float(v) for v in model_voxel_size)
    return scale


def volume_of(data, what="image"):
    """A layer's data as one ``ZYX`` volume, or a clear error."""
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D (ZYX) {what} for a volume, got {data.ndim}-D data "
                         f"of shape {data.shape}")
    return data


def frames_of(data, rgb=False, what="image"):
    """A layer's data as a list of 2-D frames (``YX``, or ``YXC`` for RGB): a stack or time
    series gives one frame per plane; a clear error otherwise."""
    data = np.asarray(data)
    planes = data.ndim - (1 if rgb else 0)
    if planes == 2:
        return [data]
    if planes == 3:
        return list(data)
    raise ValueError(f"expected a 2-D {what} or a stack of 2-D frames (3-D), got "
                     f"{data.ndim}-D data of shape {data.shape}")


def _report(error):
    """Notify a failure: one line for the user's mistakes, the type too for anything else."""
    if isinstance(error, NothingLearned):        # a complete folder, but a useless model
        show_warning(f"unet-tf: {error}")
    elif isinstance(error, USER_ERRORS):
        show_error(f"unet-tf: {error}")
    else:
        show_error(f"unet-tf: internal error: {type(error).__name__}: {error}")


class _Job:
    """A worker and its Cancel flag, wired to a progress bar and a Run/Cancel pair."""

    def __init__(self, run_button, cancel_button, bar):
        self.run, self.cancel, self.bar = run_button, cancel_button, bar
        self.worker, self.cancelled = None, threading.Event()
        self.cancel.enabled = False
        self.cancel.changed.connect(self.stop)

    def start(self, function, on_done, *args):
        # TensorFlow imported here, in Qt's main thread: imported first in one of Qt's pooled
        # worker threads, its next job in another segfaulted in pybind11's GIL handling
        # (examples/napari_screenshots.py, Segment then Retrain, on Xvfb)
        from unet_tf import backend  # noqa: F401
        self.cancelled.clear()
        # errored given here, not connected later: otherwise the worker also re-raises the
        # error in Qt's event loop, beside the notification
        worker = create_worker(function, *args, _start_thread=False,
                               _connect={"errored": _report})
        if hasattr(worker, "yielded"):
            worker.yielded.connect(self.show)
        # the job is over before on_done runs, so that on_done can start the next one (after the
        # demo model's training, its Segment); the worker's late "finished" then leaves it alone
        worker.returned.connect(lambda result: (self._finished(worker), on_done(result)))
        worker.finished.connect(lambda: self._finished(worker))
        self.worker = worker
        self.run.enabled, self.cancel.enabled = False, True
        worker.start()

    def show(self, progress):
        done, total = progress
        self.bar.max, self.bar.value = max(total, 1), done

    def stop(self):
        """Cancel: a generator (Segment) quits at its next chunk, and nothing is added; a
        function (Train) sees the flag at its next step and returns what it has."""
        self.cancelled.set()
        if self.worker is not None and hasattr(self.worker, "yielded"):
            self.worker.quit()

    def _finished(self, worker):
        if self.worker is worker:
            self.run.enabled, self.cancel.enabled = True, False
            self.worker = None

    @property
    def running(self):
        return self.worker is not None


# --------------------------------------------------------------------------- Segment

def _segment(folder, frames, with_probabilities):
    """Generator run in a worker: yields ``(done, total)`` chunks; returns labels and
    probabilities (stacked for several frames; a 3-D net: ``frames`` is one volume)."""
    from unet_tf import UNet, chunked, overlap_tile
    from unet_tf.omezarr import open_image
    from unet_tf.instances import label_image
    model = UNet.cached(folder)
    if model.is_volume:
        return (yield from _segment_volume(model, frames, with_probabilities))
    frames = [overlap_tile.as_yxc_with(frame, model.channels) for frame in frames]
    chunk = max(SEGMENT_CHUNK - SEGMENT_CHUNK % model.period, model.period)
    windows = [chunked.chunk_windows(frame.shape, chunk) for frame in frames]
    total, done = sum(map(len, windows)), 0
    labels, probabilities = [], []
    for frame, frame_windows in zip(frames, windows):
        lohi = overlap_tile.normalization_range(frame, model.normalization)
        lazy = open_image(frame)
        result = np.zeros((*frame.shape[:2], model.num_classes), np.float32)
        for _, _, (top, left, height, width) in frame_windows:
            result[top:top + height, left:left + width] = model.predict_window(
                lazy, lohi, (top, left, height, width))
            done += 1
            yield done, total
        labels.append(label_image(result, model.postprocessing))
        if with_probabilities:
            probabilities.append(result[..., 1:].max(-1) if model.num_classes > 2
                                 else result[..., 1])
    stack = lambda arrays: arrays[0] if len(arrays) == 1 else np.stack(arrays)
    return stack(labels), (stack(probabilities) if with_probabilities else None)


def _segment_volume(model, volume, with_probabilities):
    """:func:`_segment` for a 3-D net: the volume in boxes of one default tile's output each
    (the same tiles as one :meth:`~unet_tf.UNet.predict`, with progress and Cancel between
    them), labelled in 3-D at the model's voxel size."""
    from unet_tf import overlap_tile
    from unet_tf.omezarr import open_volume
    from unet_tf.volume_chunked import volume_chunk_windows
    from unet_tf.volume_sizes import volume_output_shape
    volume = overlap_tile.as_zyxc_with(volume, model.channels)
    tile = model.tile_size(volume.shape[:3], 1)
    out = volume_output_shape(tuple(tile), model.config.architecture.plan)
    chunk = [max(o - o % p, p) for o, p in zip(out, model.period)]   # starts on the pooling grid
    windows = volume_chunk_windows(volume.shape, chunk)
    lohi = overlap_tile.normalization_range(volume, model.normalization)
    lazy = open_volume(volume)
    result = np.zeros((*volume.shape[:3], model.num_classes), np.float32)
    for done, (_, starts, sizes) in enumerate(windows, 1):
        box = tuple(slice(s, s + n) for s, n in zip(starts, sizes))
        result[box] = model.predict_volume_window(lazy, lohi, (starts, sizes))
        yield done, len(windows)
    probability = (result[..., 1:].max(-1) if model.num_classes > 2 else result[..., 1]) \
        if with_probabilities else None
    return model.postprocess(result), probability


def _train_demo_model(folder):
    """The demo's plan and training on the whole bundled sample, cached for the next use."""
    from unet_tf import UNet
    from unet_tf.demo import DEMO_BUDGET
    from unet_tf.planner import configure_run
    from unet_tf.samples import load_sample
    image, labels = load_sample()
    config, plan = configure_run([image], [labels], time_budget=DEMO_BUDGET,
                                 at_least_minimum=True, fixed={"out": str(folder)})
    UNet.train(config, [image], [labels], overwrite=True, verbose=0, plan=plan)


class SegmentWidget(Container):
    """Image layer + model folder -> a Labels layer of instances (and the probability)."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.segmented, self.round_folders, self.state = None, [], None
        self.image = ComboBox(label="image", choices=self._images)
        self.model = FileEdit(label="model folder", mode="d", value="")
        self.model.tooltip = "empty: the bundled demo model (trained once, ~2 min, then cached)"
        self.probabilities = CheckBox(text="also add the foreground probability", value=False)
        self.info = Label(value="")
        self.run = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel")
        self.bar = ProgressBar(value=0, max=1, label="progress")
        # correct and retrain: edit the Labels layer Segment made, then fine-tune on the edits
        self.all_correct = CheckBox(text="the corrected frames are right everywhere", value=False)
        self.all_correct.tooltip = ("off: only what you edited (and 8 px around it) is learned; "
                                    "on: every pixel of each edited frame is")
        self.retrain_budget = LineEdit(label="retrain budget", value="1m")
        self.retrain_button = PushButton(text="Retrain on my corrections")
        self.rounds = ComboBox(label="model rounds", choices=self._round_choices)
        self.extend([self.image, self.model, self.probabilities, self.run, self.cancel_button,
                     self.bar, self.info, self.all_correct, self.retrain_budget,
                     self.retrain_button, self.rounds])
        self.job = _Job(self.run, self.cancel_button, self.bar)
        self.retrain_job = _Job(self.retrain_button, self.cancel_button, self.bar)
        self.run.changed.connect(self.segment)
        self.retrain_button.changed.connect(self.retrain)
        self.model.changed.connect(self._describe)
        self.rounds.changed.connect(self._choose_round)
        self._describe()

    def _images(self, _=None):
        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def folder(self):
        text = str(self.model.value).strip()
        return demo_model_folder() if text in ("", ".") else Path(text)

    def _describe(self, _=None):
        folder = self.folder()
        if not (folder / "config.json").is_file():
            self.info.value = ("demo model: trained on first use" if folder == demo_model_folder()
                               else "")
            return
        try:
            from unet_tf.model_folder import read_config
            config = read_config(folder)
        except USER_ERRORS as error:
            self.info.value = f"not a model folder: {error}"[:120]
            return
        a = config.architecture
        self.info.value = (f"3-D net (voxel size {voxel_text(config.voxel_size)}), depth {a.depth}, "
                           f"{a.filters} filters, {a.num_classes} classes; segments volumes"
                           if config.is_volume else
                           f"depth {a.depth}, {a.filters} filters, {a.num_classes} classes; "
                           "runtime Keras, tiles sized per 1024 px chunk")

    def segment(self, _=None):
        """Start segmenting the chosen layer; a Labels layer appears when done."""
        if self.job.running or self.retrain_job.running:
            return
        layer = self.image.value
        try:
            if layer is None:
                raise ValueError("choose an image layer to segment (open an image first)")
            folder = self.folder()
            if folder == demo_model_folder() and not (folder / "config.json").is_file():
                frames_of(layer.data, layer.rgb)   # a layer it cannot take says so first
                show_info("unet-tf: training the demo model once (~2 min); it is cached in "
                          f"{folder}")
                return self.job.start(_train_demo_model, lambda _: self.segment(), folder)
            from unet_tf.model_folder import read_config
            config = read_config(folder)   # a broken folder says so here, before the worker
            if config.is_volume:
                frames = volume_of(layer.data, f"image ({folder} is a 3-D net)")
                _warn_other_voxel_size(layer, config.voxel_size)
            else:
                frames = frames_of(layer.data, layer.rgb)
        except USER_ERRORS as error:
            return _report(error)
        self.job.start(_segment, lambda result: self._add(layer, folder, result), folder,
                       frames, self.probabilities.value)

    def _add(self, layer, folder, result):
        labels, probability = result
        geometry = {"scale": layer.scale[-labels.ndim:], "translate": layer.translate[-labels.ndim:]}
        name = f"{layer.name} [unet-tf]"
        volume = labels.ndim == 3 and _model_voxel_size(folder) is not None   # a 3-D net's
        tag = "volume" if volume else True       # (Evaluate scores its objects in 3-D)
        self._show(self.viewer.add_labels, name, labels, geometry, tag)
        # what Retrain compares the edited layer with
        self.segmented = {"image": layer, "labels": name, "original": labels.copy(),
                          "folder": Path(folder), "volume": volume}
        if probability is not None:
            self._show(self.viewer.add_image, f"{layer.name} probability [unet-tf]", probability,
                       {**geometry, "colormap": "magma", "blending": "additive", "opacity": 0.5},
                       tag)
        count = int(labels.max())
        self.info.value = f"{count} objects in {layer.name!r}"
        show_info(f"unet-tf: {count} objects in {layer.name}")

    def _show(self, add, name, data, options, tag):
        """Replace the data of our own earlier layer of that name, else add a new layer;
        ``tag`` goes into its metadata (``"unet-tf"``)."""
        if name in self.viewer.layers and self.viewer.layers[name].metadata.get("unet-tf"):
            self.viewer.layers[name].data = data
            self.viewer.layers[name].metadata["unet-tf"] = tag
        else:
            add(data, name=name, metadata={"unet-tf": tag}, **options)


    # ------------------------------------------------------------------- correct, retrain

    def _round_choices(self, _=None):
        return [str(folder) for folder in self.round_folders]

    def _choose_round(self, value):
        if value and str(self.model.value) != value:
            self.model.value = value

    def _corrections(self):
        """``(frames, masks, ignore_label)``: the edited frames of the last segmentation and
        their corrected labels, what nobody checked marked with an unused value."""
        from unet_tf.masks import correction_region
        done = self.segmented
        if done is None:
            raise ValueError("segment an image first, correct the labels layer it adds "
                             "(paint, erase, fill), then retrain")
        if done["labels"] not in self.viewer.layers:
            raise ValueError(f"the labels layer {done['labels']!r} is gone: segment again")
        data = np.asarray(self.viewer.layers[done["labels"]].data)
        if data.shape != done["original"].shape:
            raise ValueError(f"the labels layer {done['labels']!r} changed shape since "
                             "Segment: segment again")
        if done["volume"]:   # one volume, corrected in 3-D
            edited, original, frames = [data], [done["original"]], [done["image"].data]
        else:
            edited = frames_of(data, what="labels layer")
            original = frames_of(done["original"], what="labels layer")
            frames = frames_of(done["image"].data, done["image"].rgb)
        regions = [correction_region(o, e, ndim=o.ndim) for o, e in zip(original, edited)]
        keep = [i for i, region in enumerate(regions) if region.any()]
        if not keep:
            raise ValueError(f"no correction in {done['labels']!r}: edit its labels (paint, "
                             "erase, fill, split, merge) before retraining")
        if self.all_correct.value:
            return [frames[i] for i in keep], [edited[i] for i in keep], None
        ignore = max(int(e.max()) for e in edited) + 1    # a value no object has
        masks = [np.where(regions[i], edited[i], ignore) for i in keep]
        return [frames[i] for i in keep], masks, ignore

    def retrain(self, _=None):
        """Fine-tune the model that made the segmentation on the corrections, into a new
        folder (a round); Segment then uses it."""
        if self.job.running or self.retrain_job.running:
            return
        try:
            frames, masks, ignore = self._corrections()
            from unet_tf.planner import parse_duration
            parse_duration(self.retrain_budget.value)
            source = self.segmented["folder"]
            out = next_round(source)
        except USER_ERRORS as error:
            return _report(error)
        if not self.round_folders:
            self.round_folders.append(source)
        self.state = _training_state()
        voxel_size = voxel_size_of(self.segmented["image"], _model_voxel_size(source)) \
            if self.segmented["volume"] else None
        self.retrain_job.start(_train, self._retrained, frames, masks, out,
                               self.retrain_budget.value, 0, ignore, self.retrain_job.cancelled,
                               self.state, source, True, voxel_size)
        _follow_training(self.state, self.retrain_job, self.bar, self.info, "retraining, ")

    def _retrained(self, folder):
        folder = Path(folder)
        self.round_folders.append(folder)
        self.rounds.reset_choices()
        self.rounds.value = str(folder)     # Segment uses the new round from now on
        self.model.value = str(folder)
        show_info(f"unet-tf: retrained on your corrections -> {folder}; Segment uses it "
                  "(earlier rounds stay under 'model rounds')")


def _model_voxel_size(folder):
    from unet_tf.model_folder import read_config
    return read_config(folder).voxel_size


def _warn_other_voxel_size(layer, model_voxel_size):
    """Warn when a volume layer's scale (where set) differs from the voxel size a 3-D net was
    trained at by more than 25 % along an axis: the net sees objects at another size in voxels."""
    voxel = voxel_size_of(layer, model_voxel_size)
    if any(abs(v / m - 1) > 0.25 for v, m in zip(voxel, model_voxel_size)):
        show_warning(f"unet-tf: {layer.name!r} has voxel size {voxel_text(voxel)} (its scale), the "
                     f"model was trained at {voxel_text(model_voxel_size)}: objects appear at another "
                     "size in voxels, which can segment worse (resample the volume to match)")


def next_round(folder):
    """A new folder beside ``folder`` for the next correct-and-retrain round: NAME-round1,
    NAME-round2, ... (NAME without its own round suffix); nothing is overwritten."""
    folder = Path(folder)
    base = folder.name.split("-round")[0]
    taken = [int(p.name.rsplit("-round", 1)[1]) for p in folder.parent.glob(f"{base}-round*")
             if p.name.rsplit("-round", 1)[1].isdigit()]
    return folder.parent / f"{base}-round{max(taken, default=0) + 1}"


# --------------------------------------------------------------------------- Train

def _stop_on_cancel(cancelled, state):
    """A Keras callback: records step and loss for the widget, and stops on Cancel."""
    from ..backend import keras

    class Progress(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            state["step"] += 1
            state["loss"].append(float((logs or {}).get("loss", np.nan)))
            if cancelled.is_set():
                self.model.stop_training = True

    return Progress()


def _training_state():
    """What a training worker reports to its widget (see :func:`_stop_on_cancel`)."""
    return {"step": 0, "total": 0, "loss": [], "plan": "", "start": time.time()}


def _follow_training(state, job, bar, label, prefix="", plan=None):
    """Show a training worker's ``state`` while ``job`` runs, every 300 ms: steps in ``bar``,
    the recent loss and the time in ``label``, the plan table in ``plan`` (a text box)."""
    from qtpy.QtCore import QTimer
    if not job.running:   # finished: the widget's own message (e.g. "cancelled") stays
        return
    if plan is not None and state["plan"] and not plan.value:
        plan.value = state["plan"]
    if state["total"]:
        bar.max, bar.value = state["total"], min(state["step"], state["total"])
    if state["loss"]:
        label.value = (f"{prefix}step {state['step']}: loss {np.mean(state['loss'][-10:]):.4f} "
                       f"({time.time() - state['start']:.0f} s)")
    QTimer.singleShot(300, lambda: _follow_training(state, job, bar, label, prefix, plan))


def _train(frames, masks, out, budget, steps, ignore_label, cancelled, state, start_from=None,
           retrain=False, voxel_size=None):
    """Plan and train (in a worker), from scratch or fine-tuning ``start_from`` (``retrain``:
    on corrections of its own segmentation); returns the model folder. With ``voxel_size``,
    ``frames`` are ``ZYX`` volumes and a 3-D net is planned."""
    from unet_tf import UNet
    from unet_tf.planner import configure_run
    given = {"epochs": 1, "steps_per_epoch": steps, "val_split": 0.0} if steps else {}
    if ignore_label:
        given["ignore_label"] = ignore_label
    if start_from:
        given["start_from"] = str(Path(start_from).resolve())
    if retrain:   # corrections of the source's own output: its target and classes, its head
        from unet_tf.model_folder import read_config
        source = read_config(start_from)
        given.update(target=source.target, num_classes=source.architecture.num_classes,
                     class_names=list(source.class_names))
    if voxel_size is not None:
        from unet_tf.volume_planner import make_volume_plan
        plan = make_volume_plan(frames, masks, voxel_size, budget, given,
                                at_least_minimum=bool(start_from))
        config = plan.config(out=str(out))
    else:   # a short retrain budget on a slow machine is raised to the shortest useful run
        config, plan = configure_run(frames, masks, given, budget, fixed={"out": str(out)},
                                     at_least_minimum=bool(start_from))
    state["plan"] = plan.table()
    state["total"] = config.epochs * config.steps_per_epoch
    UNet.train(config, frames, masks, overwrite=True, verbose=0, plan=plan,
               callbacks=[_stop_on_cancel(cancelled, state)])
    return out


class TrainWidget(Container):
    """Image + Labels layers -> a model folder, planned within a time budget."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.image = ComboBox(label="image", choices=lambda _: self._layers(Image))
        self.labels = ComboBox(label="labels", choices=lambda _: self._layers(Labels))
        self.out = FileEdit(label="model folder", mode="d", value="unet-tf-model")
        self.budget = LineEdit(label="time budget", value="10m")
        self.steps = SpinBox(label="steps (0: planned)", value=0, min=0, max=100000)
        self.ignore = SpinBox(label="unannotated label (0: none)", value=0, min=0, max=2**31 - 1)
        self.ignore.tooltip = ("the label painted where nobody annotated: those pixels are "
                               "neither learned nor scored (partial annotations)")
        self.volumes = CheckBox(text="3-D layers are volumes (a 3-D net)", value=False)
        self.volumes.tooltip = ("off: a 3-D layer is a stack of 2-D frames (a 2-D net); on: one "
                                "ZYX volume, its voxel size the layer's scale")
        self.start_from = FileEdit(label="fine-tune from", mode="d", value="")
        self.start_from.tooltip = ("empty: from scratch; a model folder: start from its weights "
                                   "(planned with fewer steps and a lower learning rate)")
        self.run = PushButton(text="Train")
        self.cancel_button = PushButton(text="Cancel")
        self.bar = ProgressBar(value=0, max=1, label="steps")
        self.loss = Label(value="")
        self.plan = TextEdit(value="", label="plan")
        self.extend([self.image, self.labels, self.out, self.budget, self.steps, self.ignore,
                     self.volumes, self.start_from, self.run, self.cancel_button, self.bar, self.loss,
                     self.plan])
        self.job = _Job(self.run, self.cancel_button, self.bar)
        self.run.changed.connect(self.train)
        self.state = None
        self.trained = None

    def _layers(self, kind):
        return [layer for layer in self.viewer.layers if isinstance(layer, kind)]

    def _data(self):
        image, labels = self.image.value, self.labels.value
        if image is None or labels is None:
            raise ValueError("choose an image layer and a labels layer (the annotations)")
        if self.volumes.value:
            frames = [volume_of(image.data)]
            masks = [volume_of(labels.data, "labels layer")]
            same = frames[0].shape == masks[0].shape
        else:
            frames = frames_of(image.data, image.rgb)
            masks = frames_of(labels.data, what="labels layer")
            same = len(frames) == len(masks) and frames[0].shape[:2] == masks[0].shape
        if not same:
            raise ValueError(f"image {image.name!r} {np.shape(image.data)} and labels "
                             f"{labels.name!r} {np.shape(labels.data)} do not match")
        return frames, [np.asarray(m) for m in masks]

    def train(self, _=None):
        """Start planning and training; the folder is written when done (or cancelled)."""
        if self.job.running:
            return
        try:
            frames, masks = self._data()
            out = Path(str(self.out.value))
            if (out / "model.keras").exists():
                show_info(f"unet-tf: {out} holds a model; training replaces it")
            from unet_tf.planner import parse_duration
            parse_duration(self.budget.value)
            source = str(self.start_from.value).strip()
            source = None if source in ("", ".") else Path(source)
            trained_at = _model_voxel_size(source) if source is not None and \
                (source / "config.json").is_file() else None
            voxel_size = voxel_size_of(self.image.value, trained_at) if self.volumes.value \
                else None
            if source is not None:
                from unet_tf.model_folder import fine_tune_source
                channels = frames[0].shape[2] if frames[0].ndim == 3 and not voxel_size else 1
                fine_tune_source(source, channels, {"voxel_size": voxel_size})
        except USER_ERRORS as error:
            return _report(error)
        self.state = _training_state()
        self.job.start(_train, self._done, frames, masks, out, self.budget.value,
                       self.steps.value, self.ignore.value or None, self.job.cancelled,
                       self.state, source, False, voxel_size)
        _follow_training(self.state, self.job, self.bar, self.loss, plan=self.plan)

    def _done(self, folder):
        self.trained = Path(folder)
        stopped = " (cancelled: the model so far)" if self.job.cancelled.is_set() else ""
        self.loss.value += f" -> {folder}{stopped}"
        show_info(f"unet-tf: model written to {folder}{stopped}; choose it in Segment")


# --------------------------------------------------------------------------- Evaluate

class EvaluateWidget(Container):
    """Predicted vs true Labels layers -> the metrics table; merges and splits highlighted."""

    ROWS = ("foreground_iou", "f1", "ap50", "mean_ap", "true", "predicted", "missed",
            "false_positives", "merged", "split")

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        labels = lambda _: [layer for layer in self.viewer.layers if isinstance(layer, Labels)]
        self.prediction = ComboBox(label="predicted", choices=labels)
        self.truth = ComboBox(label="ground truth", choices=labels)
        self.volumes = CheckBox(text="3-D layers are volumes (objects in 3-D)", value=False)
        self.volumes.tooltip = ("off: each frame of a stack is scored on its own; on: objects "
                                "are matched across slices (set for a 3-D net's segmentation)")
        self.run = PushButton(text="Evaluate")
        self.table = Table(value={"metric": [], "value": []})
        self.extend([self.prediction, self.truth, self.volumes, self.run, self.table])
        self.run.changed.connect(self.evaluate)
        self.prediction.changed.connect(self._follow_prediction)
        self._follow_prediction()

    def _follow_prediction(self, _=None):
        """Our own segmentations set the switch: a 3-D net's is scored as a volume, a 2-D net's
        frame by frame (the user can change it after)."""
        layer = self.prediction.value
        tag = layer.metadata.get("unet-tf") if layer is not None else None
        if tag:
            self.volumes.value = tag == "volume"

    def evaluate(self, _=None):
        """Fill the table; add a ``merged / split`` layer (1: merged, 2: split)."""
        from unet_tf.metrics import evaluate, merges_and_splits
        try:
            predicted, truth = self.prediction.value, self.truth.value
            if predicted is None or truth is None:
                raise ValueError("choose a predicted and a ground-truth labels layer")
            if predicted is truth:
                raise ValueError("choose two different labels layers")
            if np.shape(predicted.data) != np.shape(truth.data):
                raise ValueError(f"{predicted.name!r} {np.shape(predicted.data)} and "
                                 f"{truth.name!r} {np.shape(truth.data)} differ in shape")
            if self.volumes.value:
                pairs = [(volume_of(truth.data, "labels layer"),
                          volume_of(predicted.data, "labels layer"))]
            else:
                pairs = list(zip(frames_of(truth.data, what="labels layer"),
                                 frames_of(predicted.data, what="labels layer")))
            rows = [evaluate(np.asarray(t), np.asarray(p)) for t, p in pairs]
            problems = np.stack([merges_and_splits(np.asarray(t), np.asarray(p))
                                 for t, p in pairs])
        except USER_ERRORS as error:
            return _report(error)
        values = [float(np.mean([r[k] for r in rows])) if k in ("foreground_iou", "f1", "ap50",
                                                               "mean_ap")
                  else int(sum(r[k] for r in rows)) for k in self.ROWS]
        self.table.value = {"metric": list(self.ROWS),
                            "value": [f"{v:.4f}" if isinstance(v, float) else str(v)
                                      for v in values]}
        problems = problems[0] if len(pairs) == 1 else problems
        name = "merged / split"
        if name in self.viewer.layers:
            self.viewer.layers[name].data = problems
        else:
            self.viewer.add_labels(problems, name=name, opacity=0.7,
                                   scale=predicted.scale[-problems.ndim:])
        self.metrics = dict(zip(self.ROWS, values))
