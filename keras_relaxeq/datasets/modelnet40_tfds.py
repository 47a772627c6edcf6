"""TFDS builder for ModelNet40 prepared from a manual directory.

Usage::

    import tensorflow_datasets as tfds
    from keras_relaxeq.datasets.modelnet40_tfds import ModelNet40

    builder = ModelNet40(data_dir="~/tensorflow_datasets")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir="/path/to/modelnet40_ply_hdf5_2048"))
    ds = builder.as_dataset(split="train")

The manual directory is read with :mod:`keras_relaxeq.datasets.modelnet40` (either public
layout, the layout folder itself or its parent).  Points are stored as in the files
(not centred or scaled); apply :func:`~keras_relaxeq.datasets.modelnet40.normalize_point_clouds`
or use :func:`~keras_relaxeq.datasets.modelnet40.modelnet40_dataset` for the paper's protocol.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from keras_relaxeq.datasets.modelnet40 import (
    MODELNET40_CLASSES,
    available_splits,
    read_modelnet40,
    resolve_data_dir,
)

__all__ = ["ModelNet40"]

_CITATION = """\
@inproceedings{wu20153d,
  title={3D ShapeNets: A Deep Representation for Volumetric Shapes},
  author={Wu, Zhirong and Song, Shuran and Khosla, Aditya and Yu, Fisher and Zhang, Linguang
          and Tang, Xiaoou and Xiao, Jianxiong},
  booktitle={CVPR},
  year={2015}
}"""


class ModelNet40(tfds.core.GeneratorBasedBuilder):
    """ModelNet40 point clouds (40 classes) from ``modelnet40_ply_hdf5_2048``-style files."""

    name = "modelnet40_relaxeq"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # Where TFDS looks for a checksums file (there is none: the data come from manual_dir).
    # Set explicitly because TFDS's own lookup imports the `importlib_resources` backport,
    # which tensorflow-datasets does not install.
    code_path = epath.Path(__file__)
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put ModelNet40 in `manual_dir`: either the `modelnet40_ply_hdf5_2048` layout
    (shape_names.txt, train_files.txt / test_files.txt, ply_data_*.h5; any number of points
    per shape) or the `modelnet40_normal_resampled` text layout, directly or in a sub-folder
    named modelnet40_aligned_1024, modelnet40_ply_hdf5_2048 or modelnet40_normal_resampled.
    The test split is generated only when its list file is present.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="ModelNet40 CAD models sampled as point clouds (xyz, raw coordinates).",
            features=tfds.features.FeaturesDict(
                {
                    "points": tfds.features.Tensor(shape=(None, 3), dtype=np.float32),
                    "label": tfds.features.ClassLabel(names=MODELNET40_CLASSES),
                    "shape_id": tfds.features.Text(),
                }
            ),
            supervised_keys=("points", "label"),
            homepage="https://modelnet.cs.princeton.edu/",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        data_dir = resolve_data_dir(dl_manager.manual_dir)
        return {split: self._generate_examples(data_dir, split) for split in available_splits(data_dir)}

    def _generate_examples(self, data_dir, split):
        data = read_modelnet40(data_dir, split)
        if tuple(data.class_names) != MODELNET40_CLASSES:
            raise ValueError(
                f"The class names in {data_dir} are not the 40 ModelNet40 classes "
                f"in the official order: {data.class_names}."
            )
        for i in range(len(data)):
            shape_id = data.shape_ids[i] if data.shape_ids else f"{split}/{i:05d}"
            yield i, {"points": data.points[i], "label": int(data.labels[i]), "shape_id": shape_id}
