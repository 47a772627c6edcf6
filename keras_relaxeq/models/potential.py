"""``MoleculePotential``: a trained energy / force model of one molecule in physical units, with its inputs checked.

The MD17 recipe (``recipes/md17.py``) trains an :class:`~keras_relaxeq.models.equiformer.Equiformer` on
standardised targets (``energy' = (E - energy_mean) / scale``, ``forces' = F / scale``,
:class:`~keras_relaxeq.datasets.rmd17.TargetScaler`).  :class:`MoleculePotential` wraps such a model for use and
serving:

* **units**: ``energy`` in kcal/mol as **float64** (``energy' * scale + energy_mean``: the absolute energies of
  MD17 molecules are ~1e5 kcal/mol, where float32 keeps only ~0.01 kcal/mol), ``forces`` in kcal/mol/Å
  (float32, ``forces' * scale``); both follow from the wrapped model's single output scale, so
  ``forces = -dE/dpos`` still holds exactly;
* **inputs**: ``positions`` ``[batch, atoms, 3]`` float (Å) and ``atomic_numbers`` ``[batch, atoms]`` int, with
  ``atoms`` the molecule's atom count; shape and finite values are checked (:class:`InputCheck`), and the atomic
  numbers of every row must be the molecule's (in any order: the model is permutation equivariant), because the
  energy offset belongs to that molecule; anything else is refused with an error that names the input.

Build one with :func:`molecule_potential`.
"""

from __future__ import annotations

import importlib

import keras
import numpy as np
import tensorflow as tf

from keras_relaxeq.models.checks import InputCheck

register = keras.saving.register_keras_serializable(package="keras_relaxeq")

#: element symbols by atomic number (H..Ne: what the MD17 molecules contain, and the Equiformer's table)
ELEMENTS = {1: "H", 2: "He", 3: "Li", 4: "Be", 5: "B", 6: "C", 7: "N", 8: "O", 9: "F", 10: "Ne"}


def formula(atomic_numbers) -> str:
    """Hill formula of a list of atomic numbers (``[6, 6, 8, 1, 1, 1, 1, 1, 1]`` -> ``C2H6O``)."""
    counts: dict[str, int] = {}
    for z in atomic_numbers:
        symbol = ELEMENTS.get(int(z), f"Z{int(z)}")
        counts[symbol] = counts.get(symbol, 0) + 1
    order = [s for s in ("C", "H") if s in counts] + sorted(s for s in counts if s not in ("C", "H"))
    return "".join(s + (str(counts[s]) if counts[s] > 1 else "") for s in order)


@register
class MoleculePotential(keras.Model):
    """Energy (float64, kcal/mol) and forces (kcal/mol/Å) of one molecule from a model of standardised targets.

    Args:
        model: a Keras model called on ``{"positions", "atomic_numbers"}`` that returns ``{"energy": [B],
            "forces": [B, A, 3]}`` in standardised units (e.g. a projected Equiformer of ``recipes/md17.py``).
        atomic_numbers: the molecule's atomic numbers (its atom order in the data set).
        energy_mean, scale: the target scaler (kcal/mol): ``E = energy' * scale + energy_mean``, ``F = forces' *
            scale``.
        molecule: the molecule's name (used in messages).
    """

    def __init__(self, model, atomic_numbers, energy_mean, scale, molecule="molecule", **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.atomic_numbers = [int(z) for z in atomic_numbers]
        if not self.atomic_numbers or min(self.atomic_numbers) < 1:
            raise ValueError(f"MoleculePotential: atomic_numbers must be positive, got {atomic_numbers}.")
        self.energy_mean = float(energy_mean)
        self.scale = float(scale)
        if not np.isfinite(self.energy_mean) or not np.isfinite(self.scale) or self.scale <= 0:
            raise ValueError(f"MoleculePotential: need a finite energy_mean and scale > 0, got {energy_mean}, {scale}.")
        self.molecule = str(molecule)
        n = len(self.atomic_numbers)
        what = f"{self.molecule} ({formula(self.atomic_numbers)}, {n} atoms)"
        self.check_positions = InputCheck(
            (n, 3),
            input_name="positions",
            layout=f"[batch, {n}, 3] (xyz in Å of the atoms of {what})",
            name="check_positions",
        )
        self.check_atomic_numbers = InputCheck(
            (n,),
            finite=False,
            input_name="atomic_numbers",
            layout=f"[batch, {n}] (the atomic numbers of {what})",
            name="check_atomic_numbers",
        )
        self._sorted_numbers = tf.constant(sorted(self.atomic_numbers), tf.int32)
        self._composition_message = (
            f"Input atomic_numbers must list the atoms of {what}: {self.atomic_numbers} in any order (the model is "
            "a potential of this molecule only). Got:"
        )

    def call(self, inputs, training=None):
        if not isinstance(inputs, dict) or not {"positions", "atomic_numbers"} <= set(inputs):
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(f"MoleculePotential: pass a dict with 'positions' and 'atomic_numbers', got {got}.")
        positions = self.check_positions(tf.cast(inputs["positions"], self.compute_dtype))
        z = self.check_atomic_numbers(tf.cast(inputs["atomic_numbers"], tf.int32))
        same = tf.reduce_all(tf.equal(tf.sort(z, axis=-1), self._sorted_numbers[None]))
        with tf.control_dependencies([tf.debugging.Assert(same, [self._composition_message, z], summarize=64)]):
            z = tf.identity(z)
        out = self.model({"positions": positions, "atomic_numbers": z}, training=training)
        energy = tf.cast(out["energy"], tf.float64) * self.scale + self.energy_mean
        forces = tf.cast(out["forces"], self.compute_dtype) * tf.cast(self.scale, self.compute_dtype)
        return {"energy": energy, "forces": forces}

    def get_config(self):
        config = super().get_config()
        config.update(
            model=keras.saving.serialize_keras_object(self.model),
            atomic_numbers=self.atomic_numbers,
            energy_mean=self.energy_mean,
            scale=self.scale,
            molecule=self.molecule,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        module = config["model"].get("module") or ""
        if module.startswith("keras_relaxeq."):  # registers the wrapped model's class (the package imports lazily)
            importlib.import_module(module)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)


def molecule_potential(model, atomic_numbers, scaler, molecule=None, name=None) -> MoleculePotential:
    """:class:`MoleculePotential` of ``model`` with the target scaler of its training run (a
    :class:`~keras_relaxeq.datasets.rmd17.TargetScaler`, or its ``get_config()`` dict as ``summary.json`` of a
    ``recipes/md17.py`` run stores it), built on one call."""
    config = scaler.get_config() if hasattr(scaler, "get_config") else dict(scaler)
    molecule = molecule or config.get("molecule") or "molecule"
    potential = MoleculePotential(
        model,
        atomic_numbers,
        config["energy_mean"],
        config["scale"],
        molecule=molecule,
        name=name or f"{molecule}_potential",
    )
    n = len(potential.atomic_numbers)
    positions = np.stack([np.arange(n), np.arange(n) % 2, np.arange(n) % 3], axis=-1)[None].astype("float32")
    potential({"positions": positions * 1.1, "atomic_numbers": np.asarray([potential.atomic_numbers], np.int32)})
    return potential


__all__ = ["ELEMENTS", "MoleculePotential", "formula", "molecule_potential"]
