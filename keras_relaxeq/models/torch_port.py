"""Load PyTorch VN-PointNet checkpoints (the published code of the paper) into Keras models.

The reference is ``PCClassification/vn-pointnet`` of StefanosPert/Equivariant_Optimization_CR
(``models/pointnet_equi/pointnet_cls.py``, the Vector Neurons VN-PointNet with relaxation
branches).  Its ``state_dict`` names map onto :func:`keras_relaxeq.models.vn_pointnet` as follows
(``nn.Linear`` weights are ``(out, in)``, Keras kernels ``(in, out)``: transposed):

* ``feat.<block>.map_to_feat.weight``, ``feat.<block>.map_to_dir.weight`` (``<block>`` a
  ``VNLinearLeakyReLU``): ``<layer>.map_to_feat.kernel``, ``<layer>.map_to_dir.kernel``;
* ``feat.<block>.batchnorm.bn.{weight, bias, running_mean, running_var}``:
  ``<layer>.batchnorm.batchnorm.{gamma, beta, moving_mean, moving_variance}``;
* ``feat.conv3.map_to_feat.weight``, ``feat.fstn.fc3.map_to_feat.weight`` (``VNLinear``):
  ``conv3.kernel``, ``fstn_fc3.kernel``; ``feat.bn3.bn.*`` (``VNBatchNorm``): ``bn3.batchnorm.*``;
* ``feat.std_feature.vn_lin.weight``: ``std_feature.vn_lin.kernel``;
* the head ``fc{1,2,3}.{weight, bias}``, ``bn{1,2}.*``: ``fc{1,2,3}.{kernel, bias}``, ``bn{1,2}.*``,

with the blocks ``feat.conv_pos``, ``feat.conv1``, ``feat.conv2``, ``feat.fstn.conv{1,2,3}``,
``feat.fstn.fc{1,2}``, ``feat.std_feature.vn{1,2}`` becoming the layers ``conv_pos``, ``conv1``,
``conv2``, ``fstn_conv{1,2,3}``, ``fstn_fc{1,2}`` and the sublayers ``vn1``, ``vn2`` of
``std_feature``.  ``num_batches_tracked`` is not used (torch's BN momentum is 0.1, Keras' 0.9).

Relaxation branches.  The reference's every ``VNLinear`` / ``VNLinearLeakyReLU`` also has
``dense_lin`` (``nn.Linear(3 C_in, 3 C_out)``, with bias) and every ``VNLinearLeakyReLU`` a
``dense_map_to_dir`` (no bias), applied as ``proj * unflatten(dense(flatten(x)))`` with ``x``
flattened channel-major (``3 c + xyz``), the layout of our branches ``theta * (W flat(x) + b)``.
So ``<block>.dense_lin.{weight,bias}`` is ``map_to_feat.relaxation_kernel`` (transposed) and
``relaxation_bias``, ``<block>.dense_map_to_dir.weight`` is ``map_to_dir.relaxation_kernel`` (its
bias is 0), ``proj`` is ``theta``.  ``std_feature.vn_lin`` has no branch in the reference: ours
stays at its initializer.  Those keys are in every reference checkpoint, also of plain training
(they are created whether used or not): a plain target ignores them (that is the projection),
a relaxed one loads them with ``load_relaxation=True``.  Only weights are ported: the
reference's penalties are not (its Lie derivative is mis-reshaped and the ``map_to_dir``
penalty reads ``dense_lin``); :class:`keras_relaxeq.RelaxedModel` computes the true ones.

The model is otherwise the reference's in every respect that training needs: batch-norm
moving variances average the unbiased batch variance, as ``torch.nn.BatchNorm*d`` does (see
:class:`keras_relaxeq.layers.TorchBatchNormalization`); torch's ``Adam(weight_decay=...)`` is
:class:`keras_relaxeq.training.AdamL2`.  The model returns logits (the reference returns
``log_softmax`` of them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_relaxeq.models.vn_pointnet import vn_pointnet

__all__ = ["vn_pointnet_from_torch_state_dict", "load_state_dict_npz", "vn_pointnet_torch_keys", "normalize_state_dict"]

#: torch ``VNLinearLeakyReLU`` blocks -> Keras layer path (layer name, then sublayer attributes).
VN_BLOCKS = {
    "feat.conv_pos": ("conv_pos",),
    "feat.conv1": ("conv1",),
    "feat.conv2": ("conv2",),
    "feat.fstn.conv1": ("fstn_conv1",),
    "feat.fstn.conv2": ("fstn_conv2",),
    "feat.fstn.conv3": ("fstn_conv3",),
    "feat.fstn.fc1": ("fstn_fc1",),
    "feat.fstn.fc2": ("fstn_fc2",),
    "feat.std_feature.vn1": ("std_feature", "vn1"),
    "feat.std_feature.vn2": ("std_feature", "vn2"),
}
#: torch ``VNLinear`` modules (weight under ``map_to_feat``) -> Keras ``VNLinear`` layers.
VN_LINEARS = {"feat.fstn.fc3": ("fstn_fc3",), "feat.conv3": ("conv3",)}
#: torch ``VNBatchNorm`` modules (``nn.BatchNorm`` under ``bn``) -> Keras ``VNBatchNorm`` layers.
VN_BATCHNORMS = {"feat.bn3": ("bn3",)}
#: plain ``nn.Linear`` applied to vectors (no relaxation branch in the reference).
VN_PLAIN_LINEARS = {"feat.std_feature.vn_lin": ("std_feature", "vn_lin")}
HEAD_DENSE = ("fc1", "fc2", "fc3")
HEAD_BATCHNORMS = ("bn1", "bn2")

_BN_FIELDS = (
    ("weight", "gamma"),
    ("bias", "beta"),
    ("running_mean", "moving_mean"),
    ("running_var", "moving_variance"),
)
#: torch keys that carry no weight of the Keras model.
_IGNORED = re.compile(r"(^|\.)num_batches_tracked$")
_RELAXATION = re.compile(r"\.(dense_lin|dense_map_to_dir)\.(weight|bias)$")
_MAX_LISTED = 8


@dataclass(frozen=True)
class _Entry:
    """One torch tensor and where it goes: the Keras layer path, the variable attribute, transposed or not."""

    key: str
    path: tuple
    attribute: str
    transpose: bool = False


def _equivariant_entries():
    entries = []
    for prefix, path in VN_BLOCKS.items():
        entries.append(_Entry(f"{prefix}.map_to_feat.weight", path + ("map_to_feat",), "kernel", True))
        entries.append(_Entry(f"{prefix}.map_to_dir.weight", path + ("map_to_dir",), "kernel", True))
        entries += [_Entry(f"{prefix}.batchnorm.bn.{t}", path + ("batchnorm", "batchnorm"), k) for t, k in _BN_FIELDS]
    for prefix, path in VN_LINEARS.items():
        entries.append(_Entry(f"{prefix}.map_to_feat.weight", path, "kernel", True))
    for prefix, path in VN_BATCHNORMS.items():
        entries += [_Entry(f"{prefix}.bn.{t}", path + ("batchnorm",), k) for t, k in _BN_FIELDS]
    for prefix, path in VN_PLAIN_LINEARS.items():
        entries.append(_Entry(f"{prefix}.weight", path, "kernel", True))
    for name in HEAD_DENSE:
        entries += [_Entry(f"{name}.weight", (name,), "kernel", True), _Entry(f"{name}.bias", (name,), "bias")]
    for name in HEAD_BATCHNORMS:
        entries += [_Entry(f"{name}.{t}", (name,), k) for t, k in _BN_FIELDS]
    return entries


def _relaxation_entries():
    """The reference's branch weights; ``dense_map_to_dir`` has no bias (ours is set to 0)."""
    entries = []
    for prefix, path in list(VN_BLOCKS.items()) + list(VN_LINEARS.items()):
        feat = path + ("map_to_feat",) if prefix in VN_BLOCKS else path
        entries.append(_Entry(f"{prefix}.dense_lin.weight", feat, "relaxation_kernel", True))
        entries.append(_Entry(f"{prefix}.dense_lin.bias", feat, "relaxation_bias"))
        if prefix in VN_BLOCKS:
            entries.append(
                _Entry(f"{prefix}.dense_map_to_dir.weight", path + ("map_to_dir",), "relaxation_kernel", True)
            )
    return entries


def vn_pointnet_torch_keys(relaxation=False):
    """The ``state_dict`` keys the converter reads (``relaxation=True``: also the branch keys)."""
    entries = _equivariant_entries() + (_relaxation_entries() if relaxation else [])
    return [e.key for e in entries]


def _to_numpy(value, key):
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as error:  # noqa: BLE001 - the message names the key
        raise TypeError(f"state_dict[{key!r}] is a {type(value).__name__}, not an array or tensor.") from error


def normalize_state_dict(state_dict):
    """``{key: numpy array}`` from a torch ``state_dict`` (tensors or arrays) or a training checkpoint.

    Accepts a mapping of numpy arrays or torch tensors (converted with ``.detach().cpu().numpy()``),
    or a checkpoint dict holding it under ``model_state_dict`` / ``state_dict`` (as the reference's
    ``train_cls.py`` saves).  A ``module.`` prefix (``nn.DataParallel``) is stripped.
    """
    if not hasattr(state_dict, "items"):
        raise TypeError(
            f"Expected a state_dict (a mapping of names to tensors or arrays); got "
            f"{type(state_dict).__name__}. For a .pth file pass torch.load(path, map_location='cpu')."
        )
    for wrapper in ("model_state_dict", "state_dict"):
        if wrapper in state_dict and hasattr(state_dict[wrapper], "items"):
            state_dict = state_dict[wrapper]
            break
    out = {}
    for key, value in state_dict.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        out[name] = _to_numpy(value, key)
    return out


def load_state_dict_npz(path, prefix="w::"):
    """Read a ``state_dict`` saved as ``.npz`` with keys ``<prefix><torch name>`` (the fixtures' layout).

    Such a file is written from PyTorch with
    ``np.savez(path, **{"w::" + k: v.cpu().numpy() for k, v in model.state_dict().items()})``.
    """
    with np.load(Path(path)) as data:
        state = {k[len(prefix) :]: data[k] for k in data.files if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{path} holds no array whose name starts with {prefix!r}; pass prefix= (e.g. '').")
    return state


def _listing(keys):
    keys = sorted(keys)
    more = f" (and {len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _resolve(model, path):
    obj = model.get_layer(path[0])
    for attribute in path[1:]:
        obj = getattr(obj, attribute)
    return obj


def vn_pointnet_from_torch_state_dict(
    state_dict, num_classes=None, relaxed=False, load_relaxation=False, strict=True, **model_kwargs
):
    """Build :func:`~keras_relaxeq.models.vn_pointnet` with the weights of a PyTorch VN-PointNet checkpoint.

    Args:
        state_dict: the reference model's ``state_dict()`` (numpy arrays or torch tensors; torch is
            not needed to call this with arrays), or a checkpoint dict holding it under
            ``model_state_dict``; a ``module.`` prefix is stripped.
        num_classes: number of classes; default: the rows of ``fc3.weight``.
        relaxed: build the relaxed model (``relaxed=True``) to fine-tune the checkpoint with
            relaxation; its branches stay at their initializer unless ``load_relaxation``.
        load_relaxation: also load the reference's branch weights (``*.dense_lin.*``,
            ``*.dense_map_to_dir.weight``) into the relaxed model's branches (see the module docstring).
        strict: raise on keys of ``state_dict`` that the model has no place for (``False``: ignore them).
            The reference's branch keys never count as unexpected for a plain or a
            ``load_relaxation=False`` target: dropping them is the projection.
        **model_kwargs: further arguments of ``vn_pointnet`` (e.g. ``width``, ``k``, ``num_points``,
            ``dropout``, ``relaxation_use_bias``, ``lambda_lie``).

    Returns:
        the built Keras model (logits; the reference returns ``log_softmax``).

    Raises:
        ValueError: naming the missing, unexpected or mis-shaped keys.
    """
    state = normalize_state_dict(state_dict)
    if load_relaxation and not relaxed:
        raise ValueError("load_relaxation=True needs relaxed=True (a plain model has no relaxation branches).")
    if "fc3.weight" in state and state["fc3.weight"].ndim == 2:
        found = int(state["fc3.weight"].shape[0])
        if num_classes is None:
            num_classes = found
        elif int(num_classes) != found:
            raise ValueError(
                f"num_classes={num_classes} but the checkpoint's fc3.weight has {found} rows (classes); "
                f"pass num_classes={found} or leave it out."
            )
    if relaxed and load_relaxation and model_kwargs.get("relaxation_use_bias") is False:
        raise ValueError("load_relaxation=True needs relaxation_use_bias=True: the reference's dense_lin has a bias.")

    entries = _equivariant_entries() + (_relaxation_entries() if load_relaxation else [])
    expected = {e.key for e in entries}
    missing = expected - set(state)
    unexpected = {
        k
        for k in state
        if k not in expected and not _IGNORED.search(k) and not (_RELAXATION.search(k) and not load_relaxation)
    }
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected and strict:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if problems:
        hint = (
            "; it must be the state_dict of the reference VN-PointNet (pointnet_equi/pointnet_cls.py, "
            "feature_transform=True)"
        )
        if missing and load_relaxation and missing <= {e.key for e in _relaxation_entries()}:
            hint = "; the checkpoint has no relaxation branches: load it with load_relaxation=False"
        elif unexpected and not missing and strict:
            hint = "; pass strict=False to ignore the unexpected keys"
        raise ValueError("Cannot load the state_dict into vn_pointnet: " + "; ".join(problems) + hint + ".")

    if num_classes is None:  # fc3.weight is there (else it is missing) but not a matrix
        raise ValueError(f"fc3.weight has shape {state['fc3.weight'].shape}, not (classes, 256); pass num_classes=.")
    model = vn_pointnet(num_classes=num_classes, relaxed=relaxed, **model_kwargs)
    mis_shaped, assignments = [], []
    for entry in entries:
        variable = getattr(_resolve(model, entry.path), entry.attribute)
        value = state[entry.key]
        value = value.T if entry.transpose else value
        if tuple(value.shape) != tuple(variable.shape):
            want = tuple(variable.shape)[::-1] if entry.transpose else tuple(variable.shape)
            mis_shaped.append(f"{entry.key} {tuple(state[entry.key].shape)} (model: {want})")
            continue
        assignments.append((variable, value))
    if mis_shaped:
        raise ValueError(
            f"Cannot load the state_dict into vn_pointnet: mis-shaped keys: {_listing(mis_shaped)}; "
            "build arguments (width, num_classes) must match the checkpoint's model."
        )
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
    if load_relaxation:
        for _prefix, path in VN_BLOCKS.items():
            bias = getattr(_resolve(model, path + ("map_to_dir",)), "relaxation_bias", None)
            if bias is not None:  # dense_map_to_dir has no bias
                bias.assign(np.zeros(bias.shape, bias.dtype))
    return model
