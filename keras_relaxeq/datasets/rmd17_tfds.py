"""TFDS builder for revised MD17 (split 01) prepared from a manual directory.

Usage::

    import tensorflow_datasets as tfds
    from keras_relaxeq.datasets.rmd17_tfds import RMD17

    builder = RMD17(config="ethanol", data_dir="~/tensorflow_datasets")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir="/path/to/rmd17"))
    ds = builder.as_dataset(split="train")   # 950 frames; "validation" 50, "test" 1000

One config per molecule (:data:`~keras_relaxeq.datasets.rmd17.MOLECULES`).  The manual
directory is read with :mod:`keras_relaxeq.datasets.rmd17` (the folder of the NPZ files or a data
root with an ``rmd17/`` sub-folder); the splits are those of
:func:`~keras_relaxeq.datasets.rmd17.load_rmd17` with ``split_seed=0``.  An example is one frame with
both label sets: ``positions`` float32 ``[A, 3]`` (Å), ``atomic_numbers`` int32 ``[A]``,
``md17_energy`` / ``rmd17_energy`` float64 (kcal/mol), ``md17_forces`` / ``rmd17_forces`` float32
``[A, 3]`` (kcal/mol/Å), ``frame_index`` (row of the NPZ file) and ``md17_index`` (frame of the
original MD17 trajectory).  Targets are not standardised and there is no radius graph: use
:func:`~keras_relaxeq.datasets.rmd17.rmd17_dataset` for the training pipeline.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from keras_relaxeq.datasets.rmd17 import LABEL_SETS, MOLECULES, SPLITS, load_rmd17

__all__ = ["RMD17"]

_CITATION = """\
@article{christensen2020role,
  title={On the role of gradients for machine learning of molecular energies and forces},
  author={Christensen, Anders S. and von Lilienfeld, O. Anatole},
  journal={Machine Learning: Science and Technology},
  volume={1},
  number={4},
  pages={045018},
  year={2020}
}"""


class RMD17(tfds.core.GeneratorBasedBuilder):
    """Revised MD17 frames of one molecule (split 01: 950 train / 50 validation / 1000 test)."""

    name = "rmd17_relaxeq"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=m, description=f"{m} ({atoms} atoms).") for m, atoms in MOLECULES.items()
    ]
    code_path = epath.Path(__file__)  # no checksums file; see modelnet40_tfds.py
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put rmd17_<molecule>_train_01.npz and rmd17_<molecule>_test_01.npz (revised MD17 NPZ
    release, https://github.com/andersx/rmd17-npz or
    https://figshare.com/articles/dataset/Revised_MD17_dataset_rMD17_/12672038) in `manual_dir`,
    directly or in an `rmd17/` sub-folder.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        atoms = MOLECULES[self.builder_config.name]
        features = {
            "positions": tfds.features.Tensor(shape=(atoms, 3), dtype=np.float32),
            "atomic_numbers": tfds.features.Tensor(shape=(atoms,), dtype=np.int32),
            "frame_index": np.int64,
            "md17_index": np.int64,
        }
        for labels in LABEL_SETS:
            # bytes encoding: TFDS would otherwise store floats as float32 (0.03 kcal/mol at -4e5 kcal/mol)
            features[f"{labels}_energy"] = tfds.features.Tensor(shape=(), dtype=np.float64, encoding="bytes")
            features[f"{labels}_forces"] = tfds.features.Tensor(shape=(atoms, 3), dtype=np.float32)
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Revised MD17 molecular dynamics frames (split 01) with the recomputed (rmd17, PBE/def2-SVP) "
                "and the original (md17) energies and forces."
            ),
            features=tfds.features.FeaturesDict(features),
            homepage="https://figshare.com/articles/dataset/Revised_MD17_dataset_rMD17_/12672038",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        data_dir = str(dl_manager.manual_dir)
        return {split: self._generate_examples(data_dir, split) for split in SPLITS}

    def _generate_examples(self, data_dir, split):
        molecule = self.builder_config.name
        data = {labels: load_rmd17(molecule, split, labels, data_dir) for labels in LABEL_SETS}
        first = data[LABEL_SETS[0]]
        for i in range(len(first)):
            example = {
                "positions": first.positions[i],
                "atomic_numbers": first.atomic_numbers,
                "frame_index": int(first.frame_indices[i]),
                "md17_index": int(first.md17_indices[i]),
            }
            for labels, d in data.items():
                example[f"{labels}_energy"] = float(d.energy[i])
                example[f"{labels}_forces"] = d.forces[i]
            yield int(first.frame_indices[i]), example
