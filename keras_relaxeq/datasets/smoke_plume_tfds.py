"""TFDS builder for the smoke plume data sets, prepared from a generated folder.

Usage::

    import tensorflow_datasets as tfds
    from keras_relaxeq.datasets.smoke_plume import generate_smoke_plume
    from keras_relaxeq.datasets.smoke_plume_tfds import SmokePlume

    folder = generate_smoke_plume("rotation")          # PhiFlow; resumable, cached
    builder = SmokePlume(config="rotation", data_dir="~/tensorflow_datasets")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(folder)))
    ds = builder.as_dataset(split="train")              # one example per simulation

An example is a whole simulation: ``velocity`` float32 ``[frames, H, W, 2]`` (channels ``(v_x, v_y)``,
rows = y, as :func:`~keras_relaxeq.datasets.smoke_plume.smoke_plume_dataset` yields them), its
``buoyancy``, inflow ``side`` and ``simulation`` name.  Splits: ``train`` (the training simulations;
windows of its validation and test-future times are cut from them) and ``test_domain`` (the held-out
simulations).  Cut windows with :func:`~keras_relaxeq.datasets.smoke_plume.smoke_plume_windows`.
"""

from __future__ import annotations

import json

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

__all__ = ["SmokePlume"]

_CITATION = """\
@inproceedings{wang2022approximately,
  title={Approximately Equivariant Networks for Imperfectly Symmetric Dynamics},
  author={Wang, Rui and Walters, Robin and Yu, Rose},
  booktitle={ICML},
  year={2022}
}"""


class SmokePlume(tfds.core.GeneratorBasedBuilder):
    """2D smoke plume velocity fields simulated with PhiFlow (rotation or scale set)."""

    name = "smoke_plume_relaxeq"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="rotation", description="36 simulations, 4 inflow sides (C4, approximately)."),
        tfds.core.BuilderConfig(name="scale", description="38 simulations at resolution factors 1..4.7."),
    ]
    code_path = epath.Path(__file__)  # no checksums file; see modelnet40_tfds.py
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Generate the data set with PhiFlow (pip install 'keras_relaxeq[smoke]'):
    python -m keras_relaxeq.datasets.smoke_plume --config rotation --data-dir DIR
    and pass DIR (holding manifest.json and sim_<name>.npy) as manual_dir.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Velocity fields of 2D smoke plumes (PhiFlow 3.4.0), one example per simulation.",
            features=tfds.features.FeaturesDict(
                {
                    "velocity": tfds.features.Tensor(shape=(None, None, None, 2), dtype=np.float32, encoding="bytes"),
                    "buoyancy": tfds.features.Tensor(shape=(2,), dtype=np.float32),
                    "side": np.int32,
                    "simulation": tfds.features.Text(),
                }
            ),
            homepage="https://github.com/Rose-STL-Lab/Approximately-Equivariant-Nets",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        folder = epath.Path(dl_manager.manual_dir)
        manifest_path = folder / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(
                f"No manifest.json in {folder}: generate the data with python -m "
                f"keras_relaxeq.datasets.smoke_plume --config {self.builder_config.name} "
                f"--data-dir {folder}"
            )
        manifest = json.loads(manifest_path.read_text())
        config = manifest["config"]
        if not config["name"].startswith(self.builder_config.name):
            raise ValueError(
                f"{folder} holds the {config['name']!r} smoke plume set, not {self.builder_config.name!r}."
            )
        missing = [n for n in config["train"] + config["test_domain"] if n not in manifest["present"]]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} simulation(s) missing in {folder} (e.g. {missing[0]}); finish "
                f"the generation with python -m keras_relaxeq.datasets.smoke_plume "
                f"--config {self.builder_config.name} --data-dir {folder}"
            )
        specs = {s["name"]: s for s in config["simulations"]}
        shape = tuple(manifest["array"]["shape"])
        return {
            "train": self._generate_examples(folder, config["train"], specs, shape),
            "test_domain": self._generate_examples(folder, config["test_domain"], specs, shape),
        }

    def _generate_examples(self, folder, names, specs, shape):
        for name in names:
            path = folder / _sim_file(name)
            with path.open("rb") as f:
                array = np.load(f, allow_pickle=False)
            if array.shape != shape or array.dtype != np.float32:
                raise ValueError(f"{path}: expected a float32 array of shape {shape}, got {array.dtype} {array.shape}.")
            spec = specs[name]
            yield (
                name,
                {
                    "velocity": np.ascontiguousarray(np.moveaxis(array, 1, -1)),
                    "buoyancy": np.asarray(spec["buoyancy"], np.float32),
                    "side": int(spec["side"]),
                    "simulation": name,
                },
            )


def _sim_file(name: str) -> str:
    """File name of simulation ``name`` in a generated folder."""
    return f"sim_{name}.npy"
