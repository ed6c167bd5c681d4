"""The package's structure and the defects a new user meets first: one-way imports, loading a
saved model in a fresh interpreter, the folder-bound UNet object, file permissions, logs that
are not a terminal, and the deployment kit's copy of the tiling code."""

import ast
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import unet_tf
from unet_tf import UNet, overlap_tile
from unet_tf.io import write_image
from unet_tf.model_folder import load_model_folder
from unet_tf.tiling import predict_tiled

PACKAGE = Path(unet_tf.__file__).parent
REPO = PACKAGE.parent
TRAINING_CODE = {"training", "data", "augment", "distribute", "callbacks", "losses",
                 "volume_data"}
PREDICTION_AND_EXPORT = {"tiling", "model_folder", "unet", "metrics", "postprocess", "chunked",
                         "omezarr", "exporters", "exporters.common", "exporters.savedmodel",
                         "exporters.tflite", "exporters.onnx", "exporters.bioimageio",
                         "exporters.edgetpu", "volume_tiling", "volume_instances"}


def module_name(path):
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path, top_level_only):
    """The unet_tf modules a file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    parts = [part for part in module_name(path).split(".") if part]   # "" is the package
    package = parts if path.name == "__init__.py" else parts[:-1]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1] if node.level > 1 else package
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names = [target] if node.module else [".".join([*base, a.name]) for a in node.names]
            found.update(n for n in names if n)
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            found.update(m.removeprefix("unet_tf.") for m in modules
                         if m and m.startswith("unet_tf."))
    known = {module_name(p) for p in PACKAGE.rglob("*.py")}
    # "from . import overlap_tile" names a module; "from .images import X" names its module
    return {m if m in known else m.rsplit(".", 1)[0] for m in found} & known - {""}


def import_graph(top_level_only=False):
    """``{module: the unet_tf modules it imports}``, the package's ``__init__`` (as "") and the
    imports inside functions included unless ``top_level_only``."""
    return {module_name(p): imports_of(p, top_level_only) for p in PACKAGE.rglob("*.py")}


def reached_from(graph, module):
    reached, todo = set(), [module]
    while todo:
        for other in graph.get(todo.pop(), ()):
            if other not in reached:
                reached.add(other)
                todo.append(other)
    return reached


def test_no_import_cycles():
    graph = import_graph()
    done, stack = set(), []

    def visit(module):
        if module in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(module):]
                                                                 + [module]))
        if module in done:
            return
        stack.append(module)
        for other in graph.get(module, ()):
            visit(other)
        stack.pop()
        done.add(module)

    for module in graph:
        visit(module)


def test_prediction_and_export_import_no_training_code():
    graph = import_graph()
    graph["unet"].discard("training")   # UNet.train, the one door from a prediction object to it
    for module in PREDICTION_AND_EXPORT:
        reached = reached_from(graph, module)
        assert not reached & TRAINING_CODE, f"{module} imports {sorted(reached & TRAINING_CODE)}"


@pytest.mark.parametrize("module", ["", "cli", "sizes", "config", "io", "metrics", "instances",
                                    "images", "planner", "errors", "version", "model_folder",
                                    "masks", "stitching", "cluster", "chunked", "memory",
                                    "volume_sizes", "volume_files", "volume_instances",
                                    "volume_planner"])
def test_the_package_the_cli_and_the_pure_modules_import_no_tensorflow(module):
    reached = reached_from(import_graph(top_level_only=True), module) | {module}
    assert "backend" not in reached, f"unet_tf.{module} reaches unet_tf.backend (TensorFlow)"
    for name in reached:
        path = PACKAGE / (name.replace(".", "/") + ".py")
        source = path.read_text() if path.exists() else (PACKAGE / name / "__init__.py").read_text()
        tree = ast.parse(source)
        top = {a.name for node in tree.body if isinstance(node, ast.Import) for a in node.names}
        assert not top & {"tensorflow", "keras"}, f"unet_tf.{name} imports {top}"


def test_no_private_names_cross_modules():
    for path in [*PACKAGE.rglob("*.py"), *REPO.glob("tests/*.py"), *REPO.glob("benchmarks/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "")
                                                     .startswith("unet_tf")):
                private = [a.name for a in node.names if a.name.startswith("_")
                           and a.name != "__version__"]
                assert not private, f"{path.name} imports private {private} from {node.module}"


@pytest.mark.parametrize("name", ["overlap_tile.py", "instances.py", "imagefiles.py", "variants.py",
                                  "volume_instances.py"])
def test_the_kit_carries_an_exact_copy_of_the_tiling_instance_and_file_code(name):
    """Byte copies, but for relative imports of siblings (``from .instances`` is ``from
    instances`` in the kit, where they are files beside it)."""
    kit = REPO / "export" / name
    package = (PACKAGE / name).read_text()
    assert kit.read_text() == package.replace("\nfrom .", "\nfrom "), (
        f"export/{name} differs from unet_tf/{name}: sed 's/^from \\./from /' "
        f"unet_tf/{name} > export/{name}")
    source = kit.read_text()
    assert "import unet_tf" not in source and "from unet_tf" not in source and "from ." not in source
    assert "tensorflow" not in source
    if name != "volume_instances.py":   # 3-D labels need SciPy on the device (the kit says so)
        assert "scipy" not in source


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_quantisation_round_trips_int8_and_uint8(dtype):
    tensor = {"dtype": dtype, "quantization": (0.05, 3 if dtype == np.int8 else 128)}
    x = np.linspace(-3, 3, 101, dtype=np.float32)
    q = overlap_tile.quantize(x, tensor)
    assert q.dtype == dtype
    np.testing.assert_allclose(overlap_tile.dequantize(q, tensor), x, atol=0.05 / 2 + 1e-6)
    info = np.iinfo(dtype)   # out of range values saturate instead of wrapping
    assert overlap_tile.quantize(np.float32([1e6]), tensor)[0] == info.max


FRESH_LOAD = """
import sys
{imports}
model = keras.saving.load_model(sys.argv[1] + "/model.keras")
folder_model, config = unet_tf.load_model_folder(sys.argv[1])
print(model.name, len(model.layers), config.tile_size)
"""


@pytest.mark.parametrize("imports", ["import unet_tf.layers, keras", "import keras, unet_tf"])
def test_a_saved_model_loads_in_a_fresh_interpreter_as_the_readme_says(trained_folder, imports):
    result = subprocess.run([sys.executable, "-c", FRESH_LOAD.format(imports=imports),
                             str(trained_folder)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[0] == "unet" and result.stdout.split()[2] == "188"


NO_TENSORFLOW = """
import contextlib, io, sys
import unet_tf, unet_tf.cli, unet_tf.sizes, unet_tf.config, unet_tf.io, unet_tf.metrics
import unet_tf.instances, unet_tf.images, unet_tf.planner, unet_tf.chunked
from unet_tf.cli import main
from unet_tf.model_folder import read_config
read_config(sys.argv[1])   # a model folder's config reads without TensorFlow
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    for argv in (["--help"], ["train", "--help"], ["train", "--out", "m"]):
        try:
            main(argv)
        except SystemExit:
            pass
    codes = [main(["sizes", "570"]), main(["train", "--images", "nowhere", "--masks", "nowhere",
                                           "--out", "m"])]
print(codes, unet_tf.__version__, "tensorflow" in sys.modules, "keras" in sys.modules)
"""


def test_the_package_the_cli_and_input_errors_load_no_tensorflow():
    result = subprocess.run([sys.executable, "-c", NO_TENSORFLOW,
                             str(REPO / "tests" / "data" / "folder_format1")],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["[0,", "2]", unet_tf.__version__, "False", "False"]


def test_the_first_name_that_computes_loads_tensorflow_and_the_layers():
    import keras
    assert unet_tf.UNet.__module__ == "unet_tf.unet" and "UNet" in dir(unet_tf)
    assert keras.saving.get_registered_object("unet_tf>InputSizeCheck") is not None
    with pytest.raises(AttributeError, match="no attribute 'predict_everything'"):
        unet_tf.predict_everything


TENSORFLOWS_SYMBOLS = """
import ctypes, sys
if sys.argv[1] == "llvm-first":   # what napari's llvmpipe drawing does before a plugin loads TF
    ctypes.CDLL(sys.argv[2])
import unet_tf.backend
visible = ctypes.CDLL(None)       # the global scope: what another library's symbols bind to
for symbol in ("_ZN4llvm2cl6Option11addArgumentEv", "TF_NewStatus"):
    print(hasattr(visible, symbol))
print(unet_tf.backend.tf.reduce_sum(unet_tf.backend.tf.ones(3)).numpy())
"""


@pytest.mark.parametrize("order", ["tensorflow-first", "llvm-first"])
def test_tensorflows_llvm_stays_out_of_the_global_scope(order):
    """TensorFlow's libraries export their LLVM; in the global scope, Mesa's llvmpipe (napari
    on Xvfb or a VM) binds to it and crashes, as TF does to Mesa's when napari drew first."""
    llvm = next((str(p) for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu")
                 for p in sorted(Path(d).glob("libLLVM*.so*"))), None)
    if order == "llvm-first" and llvm is None:
        pytest.skip("no libLLVM on this machine (Debian: apt-get install libllvm15, which "
                    "Mesa's libgl1-mesa-dri brings)")
    result = subprocess.run([sys.executable, "-c", TENSORFLOWS_SYMBOLS,
                             order, llvm or ""], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["False", "False", "3.0"]


def test_unet_object_predicts_like_predict_tiled_with_the_folders_settings(trained_folder,
                                                                            sample):
    unet = UNet.from_folder(trained_folder)
    model, config = load_model_folder(trained_folder)
    image = sample[0][:150, 384:]
    expected = predict_tiled(model, image, normalization=config.normalization)
    np.testing.assert_allclose(unet.predict(image), expected, atol=1e-6)
    labels = unet.segment(image)
    assert labels.shape == image.shape and labels.max() >= 5   # nuclei, as instances
    rows = unet.evaluate([image], [sample[1][:150, 384:]], ["held-out"])
    assert rows["held-out"]["foreground_iou"] > 0.7


def modes(root):
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")
            if p.is_file() or p.is_dir()}


@pytest.mark.slow
def test_written_files_honour_the_umask(tmp_path, sample):
    image, instances = sample
    write_image(tmp_path / "images" / "a.tif", image[:200, :200])
    write_image(tmp_path / "masks" / "a.tif", instances[:200, :200])
    cli = [sys.executable, "-m", "unet_tf.cli"]
    env = dict(os.environ)
    umask = "umask 027 && "
    steps = [
        ["train", "--images", tmp_path / "images", "--masks", tmp_path / "masks", "--out",
         tmp_path / "model", "--tile-size", 124, "--depth", 3, "--filters", 4, "--epochs", 1,
         "--steps-per-epoch", 1, "--quiet"],
        ["predict", tmp_path / "model", tmp_path / "images", "--out", tmp_path / "pred",
         "--probabilities", "--quiet"],
        ["export", tmp_path / "model", "--format", "savedmodel"],
        ["export", tmp_path / "model", "--format", "tflite"],
    ]
    for args in steps:
        command = umask + " ".join(map(str, [*cli, *args]))
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                                env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    written = {**{f"model/{k}": v for k, v in modes(tmp_path / "model").items()},
               **{f"pred/{k}": v for k, v in modes(tmp_path / "pred").items()}}
    for name in ("model/model.keras", "model/config.json", "model/history.csv",
                 "model/export/model_float32.tflite", "model/export/model_float32.json",
                 "model/export/savedmodel/1/saved_model.pb", "pred/a.tif", "pred/a_overlay.png",
                 "pred/a_probabilities.tif"):
        assert written[name] == 0o640, f"{name}: {oct(written[name])}"
    written["model"] = stat.S_IMODE((tmp_path / "model").stat().st_mode)
    written["pred"] = stat.S_IMODE((tmp_path / "pred").stat().st_mode)
    for name in ("model", "model/export", "model/export/savedmodel", "model/export/savedmodel/1",
                 "pred"):
        assert written[name] == 0o750, f"{name}: {oct(written[name])}"


def test_training_into_a_log_file_writes_plain_lines(tmp_path, sample):
    image, instances = sample
    write_image(tmp_path / "images" / "a.tif", image[:200, :200])
    write_image(tmp_path / "masks" / "a.tif", instances[:200, :200])
    log = tmp_path / "train.log"
    with open(log, "w") as out:   # not a terminal, like nohup, Slurm or CI
        result = subprocess.run(
            [sys.executable, "-m", "unet_tf.cli", "train", "--images", str(tmp_path / "images"),
             "--masks", str(tmp_path / "masks"), "--out", str(tmp_path / "model"),
             "--tile-size", "124", "--depth", "3", "--filters", "4", "--epochs", "3",
             "--steps-per-epoch", "5"], stdout=out, stderr=subprocess.PIPE, text=True,
            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    text = log.read_text()
    assert not any(c in text for c in "\b\r\x1b"), repr(text[:500])
    assert [line for line in text.splitlines() if line.startswith("Epoch ")] == [
        "Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    assert sum(" - loss: " in line for line in text.splitlines()) == 3   # one line per epoch


def test_package_metadata_is_static():
    tomllib = pytest.importorskip("tomllib", reason="reads pyproject.toml with Python 3.11+")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "dependencies" not in project.get("dynamic", []), "requirements must not be computed"
    assert not any(d.startswith("tensorflow") for d in project["dependencies"])  # an extra
    assert {"cpu", "gpu", "tensorflow"} <= set(project["optional-dependencies"])
    # pytest-qt's plugin stops the whole suite where no Qt binding is installed: only [napari] has one
    assert not any(d.startswith("pytest-qt") for d in project["optional-dependencies"]["test"])
    shim = (REPO / "setup.py").read_text()
    assert "setup()" in shim and "install_requires" not in shim
    assert (REPO / "LICENSE").read_text().startswith(f"{project['license']} License")


def test_readme_links_and_paths_resolve():
    import re
    for doc in ("README.md", "CONTRIBUTING.md", "export/README.md", "benchmarks/README.md"):
        text = (REPO / doc).read_text()
        links = re.findall(r"\]\((?!https?://|#)([^)\s]+)\)", text)
        paths = re.findall(r"`((?:examples|benchmarks|unet_tf|tests|\.ci)/[\w./-]*)`", text)
        paths += re.findall(r"`(export/[\w./-]*\.(?:py|md))`", text)  # the kit, not a model's
        paths += re.findall(r"`?\b([A-Z]+\.md)\b", text)
        for path in [*links, *paths]:
            base = REPO if not path.startswith("./") else (REPO / doc).parent
            assert (base / path).exists() or (REPO / Path(doc).parent / path).exists(), \
                f"{doc} names {path}, which does not exist"


def readme_commands():
    """The command lines of the README's first bash block (install + demo, tests), comments cut."""
    text = (REPO / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_commands_verbatim():
    commands = readme_commands()
    assert any("pip install" in c for c in commands) and "python -m pytest -q" in commands
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci, f".ci/run does not run the README's command {command!r} as written"


def test_tests_needing_an_extra_skip_with_a_reason_naming_it():
    import re
    for path in sorted((REPO / "tests").glob("test_*.py")):
        calls = re.findall(r"pytest\.importorskip\((.*?)\)\n", path.read_text(), flags=re.S)
        for call in calls:
            assert "reason=" in call, f"{path.name}: importorskip({call}) gives no reason"


def test_no_two_modules_define_the_same_public_name():
    """One name, one concept: ``tile_grid`` or ``THRESHOLDS`` meaning two things misled readers.
    Each exporter's ``export`` is the one deliberate repeat: the dispatcher's interface."""
    defined = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            targets = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else [
                t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
            for name in targets:
                if not name.startswith("_") and name != "export":
                    defined.setdefault(name, []).append(module_name(path))
    repeated = {name: modules for name, modules in defined.items() if len(modules) > 1}
    assert not repeated, repeated
