"""Our 3-D object metrics against StarDist's ``matching`` on the same labels (issue: volumes).

StarDist brings numba (its own LLVM), kept out of this process, which holds TensorFlow:
the comparison runs in a fresh interpreter. .ci/run installs ``stardist`` (no deps) and numba.
"""

import importlib.util
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("stardist") is None or importlib.util.find_spec("numba") is None,
    reason="needs stardist and numba: pip install --no-deps stardist==0.9.2 csbdeep && "
           "pip install numba")

COMPARE = r"""
import json, sys
import numpy as np
from scipy import ndimage as ndi
from stardist.matching import matching
from unet_tf.metrics import evaluate
from unet_tf.samples import load_sample_volume

_, truth = load_sample_volume()
truth = truth.astype(np.int32)
rng = np.random.default_rng(0)
cases = {"same": truth.copy(),
         "shifted": np.roll(truth, (1, 3, -2), axis=(0, 1, 2)),
         "eroded": np.where(ndi.grey_erosion(truth, size=(1, 7, 7)) == truth, truth, 0)}
merged = truth.copy()
labels = np.unique(truth)[1:]
merged[np.isin(merged, labels[:4])] = labels[0]          # four nuclei as one
dropped = np.where(np.isin(truth, labels[::3]), 0, truth) # a third missed
extra = dropped.copy()
extra[:6, :20, :20] = 999                                 # and a false one
cases.update(merged=merged, dropped=extra)
out = {}
for name, prediction in cases.items():
    ours = evaluate(truth, prediction)
    theirs = matching(truth, prediction, thresh=0.5)
    out[name] = {"ours": [float(v) for v in (ours["f1"], ours["precision"], ours["recall"],
                          ours["true"] - ours["missed"], ours["false_positives"], ours["missed"])],
                 "stardist": [float(v) for v in (theirs.f1, theirs.precision, theirs.recall,
                              theirs.tp, theirs.fp, theirs.fn)]}
print(json.dumps({"tensorflow": "tensorflow" in sys.modules, "cases": out}))
"""


def test_our_3d_matching_gives_stardists_numbers():
    run = subprocess.run([sys.executable, "-c", COMPARE], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert not result["tensorflow"]
    for name, case in result["cases"].items():
        assert case["ours"] == pytest.approx(case["stardist"], abs=1e-9), name
    assert result["cases"]["merged"]["ours"][0] < 1 and result["cases"]["dropped"]["ours"][4] == 1
