"""keras_relaxeq: equivariant networks trained by constraint relaxation (TensorFlow / Keras 3)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "keras_relaxeq" / "version.py").read_text()).group(1)

setup(
    name="keras_relaxeq",
    version=VERSION,
    description="Train equivariant neural networks by constraint relaxation, with Keras 3 / TensorFlow.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["keras_relaxeq", "keras_relaxeq.*"]),
    include_package_data=True,
    install_requires=[
        # One TensorFlow: `tensorflow` (CPU on every x86-64 machine; CUDA with `tensorflow[and-cuda]`).
        # tensorflow-graphics requires it, so a `tensorflow-cpu` next to it would be a second copy of the
        # same `tensorflow` module, its files mixed with this one's.
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<4",
        # rotations; it declares tensorflow-addons, which only its image and projects modules import
        "tensorflow-graphics==2021.12.3",
        "tensorflow-datasets>=4.9.10",
        "numpy>=1.26",
        "h5py>=3.10",
        "tqdm>=4.66",
        "wrapt>=1.14",  # post-import hooks: Keras classes registered without importing TF eagerly
        "matplotlib>=3.8",
        "tensorboard>=2.20",
        "importlib_resources>=6",  # imported by tensorflow-datasets builders, not declared by it
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "ruff==0.14.14"],
        "smoke": ["phiflow==3.4.0"],  # generates the 2D smoke plume data sets (keras_relaxeq.datasets.smoke_plume)
    },
    entry_points={"console_scripts": ["relaxeq=keras_relaxeq.cli:main"]},
)
