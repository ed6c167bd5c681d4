import re
from pathlib import Path

from importlib import metadata

from setuptools import find_packages, setup

# TensorFlow ships under several names (tensorflow, tensorflow-cpu, tensorflow-macos, ...).
# Keep one that is already installed rather than pulling a second, multi-GB copy next to it.
# This sees the target environment only without pip's build isolation (--no-build-isolation);
# with it, the isolated build environment has no TensorFlow and `tensorflow` is required.
TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tf-nightly")


def tensorflow_requirement():
    for name in TENSORFLOW_DISTRIBUTIONS:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        return f"{name}>=2.16"
    return "tensorflow>=2.16"


version = re.search(r'__version__ = "([^"]+)"',
                    Path("unet_tf/__init__.py").read_text()).group(1)

setup(
    name="unet-tf",
    version=version,
    description="U-Net (Ronneberger et al. 2015) for microscopy segmentation in TensorFlow/Keras 3",
    long_description=Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["unet_tf", "unet_tf.*"]),
    package_data={"unet_tf": ["samples/*/*", "edgetpu_ops.json"]},
    install_requires=[
        tensorflow_requirement(),
        "keras>=3",
        "numpy",
        "scipy",
        "opencv-python-headless",
        "tifffile",
        "tensorboard",  # the TensorBoard callback writes summaries through it
        "ai-edge-litert",  # runs exported .tflite models (tf.lite.Interpreter is deprecated)
    ],
    extras_require={
        "test": ["pytest"],
        "onnx": ["tf2onnx>=1.17", "onnxruntime"],
        # bioimageio.spec 0.5.12 fails to serialise packages with pydantic >= 2.12
        "bioimageio": ["bioimageio.core>=0.11", "bioimageio.spec>=0.5.12", "pydantic<2.12",
                       "tf2onnx>=1.17", "onnxruntime"],
    },
    entry_points={"console_scripts": ["unet-tf=unet_tf.cli:main"]},
)
