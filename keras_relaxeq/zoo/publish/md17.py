"""Publishing a ``recipes/md17.py`` run (an Equiformer potential of one MD17 molecule) as
``equiformer_e3_md17<molecule>`` (``rmd17<molecule>`` for runs on the recomputed labels).

:func:`keras_relaxeq.zoo.publish.publish_run` drives the steps; :class:`MD17Run` supplies what is specific to the
MD17 recipe (``recipe`` ``recipes/md17.py`` in the run's summary):

* the model: the run's projected Equiformer (``best_projected.keras``), rebuilt by the current builder
  (``keras_relaxeq.models.equiformer.equiformer`` without relaxation) with exactly its weights, wrapped in a
  :class:`~keras_relaxeq.models.potential.MoleculePotential` with the run's target scaler: energy in kcal/mol
  (float64) and forces in kcal/mol/Å, inputs checked (shape, finite positions, the molecule's atomic numbers in
  any order);
* export: serving inputs ``positions`` float32 ``[None, A, 3]`` (Å) and ``atomic_numbers`` int32 ``[None, A]``,
  outputs ``energy`` float64 ``[None]`` and ``forces`` float32 ``[None, A, 3]``;
* measurements on the extracted artifact (:func:`measure_potential_artifact`): energy and force MAE (meV, meV/Å)
  on all 1,000 frames of ``test_01`` with the run's labels, E(3) and permutation symmetry on test frames
  (``keras_relaxeq.testing.potential_symmetry_errors``) and the largest difference to the Keras model;
* the entry fields (task ``interatomic_potential``, group ``e3``, the ``molecule`` and the ``targets`` scaler)
  and the model card, which states the run's budget next to the published one.
"""

from __future__ import annotations

import json

import numpy as np

from keras_relaxeq.zoo.publish.base import (
    PublishError,
    RecipeRun,
    _fmt,
    card_closing_lines,
    card_command_lines,
    card_metrics_lines,
    check_parity,
    check_symmetry_error,
    keras_parity_metric,
    print_measured_again,
)
from keras_relaxeq.datasets.rmd17 import KCAL_MOL_TO_MEV
from keras_relaxeq.zoo.registry import INPUT_CHECKS

RECIPE = "recipes/md17.py"
TASK = "interatomic_potential"
DEFAULT_CITATION = (
    "Pertigkiozoglou, Chatzipantazis, Trivedi, Daniilidis: Improving Equivariant Model Training via Constraint "
    "Relaxation, NeurIPS 2024; Liao, Smidt: Equiformer: Equivariant Graph Attention Transformer for 3D Atomistic "
    "Graphs, ICLR 2023; Christensen, von Lilienfeld: On the role of gradients for machine learning of molecular "
    "energies and forces, 2020 (revised MD17); Chmiela et al.: Machine learning of accurate energy-conserving "
    "molecular force fields, Science Advances 2017 (MD17)"
)
#: the published recipe's budget (recipes/md17.py DEFAULTS)
PUBLISHED = {"epochs": 1500, "width": 1.0, "blocks": 6}
#: Equiformer's published MD17 test MAEs (Liao and Smidt 2023, Table 2): energy meV, force meV/Å
EQUIFORMER_MD17 = {"aspirin": (5.3, 7.2), "benzene": (2.2, 0.35), "ethanol": (2.2, 3.1),
                   "malonaldehyde": (3.3, 5.8), "naphthalene": (3.7, 2.1), "salicylic": (4.5, 4.1),
                   "toluene": (3.8, 2.1), "uracil": (4.3, 3.4)}
#: test frames of the symmetry measurement and of the comparison with the Keras model
SYMMETRY_FRAMES, PARITY_FRAMES = 16, 32


def default_name(cfg: dict) -> str:
    """``equiformer_e3_md17ethanol`` (``rmd17ethanol`` for the recomputed labels)."""
    return f"equiformer_e3_{'md17' if cfg.get('labels', 'md17') == 'md17' else 'rmd17'}{cfg['molecule']}"


def architecture_config(cfg: dict) -> dict:
    """Arguments of ``keras_relaxeq.models.equiformer.equiformer`` that rebuild the projected model of a run."""
    return {"width": float(cfg["width"]), "num_blocks": int(cfg["blocks"])}


def recipe_test_frames(cfg: dict, data_dir=None):
    """All frames of ``test_01`` of the run's molecule with the run's labels (:class:`RMD17Data`)."""
    from keras_relaxeq.datasets.rmd17 import load_rmd17

    try:
        return load_rmd17(cfg["molecule"], "test", labels=cfg.get("labels", "md17"),
                          data_dir=data_dir or cfg.get("data_dir"))
    except FileNotFoundError as exc:
        raise PublishError(f"the MD17 data are missing: {exc}") from None


def rebuild_potential(model, summary: dict, *, data_dir=None):
    """``(MoleculePotential, architecture config)``: the run's projected Equiformer rebuilt by the current builder
    with exactly its weights (checked on test frames), with the run's target scaler and the molecule's atoms."""
    import keras

    from keras_relaxeq.models.equiformer import Equiformer, equiformer
    from keras_relaxeq.models.potential import molecule_potential
    from keras_relaxeq.models.presets import _weights_by_path

    cfg = summary["config"]
    if not isinstance(model, Equiformer):
        raise PublishError(f"the run's model is a {type(model).__name__}, not an Equiformer.")
    if "target_scaler" not in summary:
        raise PublishError("summary.json has no target_scaler: the energies cannot be given in kcal/mol.")
    config = architecture_config(cfg)
    keras.utils.set_random_seed(0)
    rebuilt = equiformer(**config, name=model.name)
    data = recipe_test_frames(cfg, data_dir)
    x = {"positions": data.positions[:2], "atomic_numbers": np.tile(data.atomic_numbers, (2, 1))}
    rebuilt(x)
    # a projected position-MLP model keeps each block's feed-forward network one level down (feed_forward/ffn/)
    source = {path.replace("/feed_forward/ffn/", "/feed_forward/"): v for path, v in _weights_by_path(model).items()}
    target = _weights_by_path(rebuilt)
    if sorted(source) != sorted(target):
        raise PublishError(f"the run's model does not fit {config}: weights {sorted(set(source) ^ set(target))[:4]} "
                           "are in one model only.")
    for path, v in target.items():
        if tuple(v.shape) != tuple(source[path].shape):
            raise PublishError(f"the run's model does not fit {config}: {path} has shape {tuple(source[path].shape)}, "
                               f"not {tuple(v.shape)}.")
        v.assign(source[path])
    want, got = model(x), rebuilt(x)
    for key in ("energy", "forces"):
        a, b = np.asarray(want[key], np.float64), np.asarray(got[key], np.float64)
        if not np.abs(a - b).max() <= 1e-5 + 1e-5 * np.abs(a).max():
            raise PublishError(f"the rebuilt Equiformer's {key} differ from the run's model's.")
    potential = molecule_potential(rebuilt, data.atomic_numbers, summary["target_scaler"], molecule=cfg["molecule"],
                                   name=f"equiformer_{cfg['molecule']}_potential")
    return potential, config


def input_signature(num_atoms: int) -> dict:
    """``{name: {"dtype", "shape", "layout"}}`` of the serving inputs."""
    return {"positions": {"dtype": "float32", "shape": [None, num_atoms, 3],
                          "layout": "[batch, atoms, xyz]: positions in Å, the atoms in any order"},
            "atomic_numbers": {"dtype": "int32", "shape": [None, num_atoms],
                               "layout": "[batch, atoms]: the molecule's atomic numbers, in the order of positions"}}


def export_potential_saved_model(model, base_dir, name: str, version: int, **kwargs):
    """``export_saved_model`` with the potential's serving signature (:func:`input_signature`), outputs ``energy``
    and ``forces``; ``kwargs`` go to ``export_saved_model`` (default ``write_config=False``)."""
    import tensorflow as tf

    from keras_relaxeq.export.serving import export_saved_model, regression_outputs

    n = len(model.atomic_numbers)
    specs = {key: tf.TensorSpec([None] + spec["shape"][1:], spec["dtype"], name=key)
             for key, spec in input_signature(n).items()}
    kwargs.setdefault("write_config", False)
    return export_saved_model(model, base_dir, name, version, input_signature=specs, outputs=regression_outputs,
                              **kwargs)


def _served(signature, batch_size: int = 50):
    """``predict(positions, atomic_numbers) -> (energy float64, forces float64)`` of a ``serving_default``."""
    import tensorflow as tf

    def predict(positions, numbers):
        e, f = [], []
        for i in range(0, len(positions), batch_size):
            out = signature(positions=tf.constant(positions[i:i + batch_size], tf.float32),
                            atomic_numbers=tf.constant(numbers[i:i + batch_size], tf.int32))
            e.append(out["energy"].numpy())
            f.append(out["forces"].numpy())
        return np.concatenate(e).astype(np.float64), np.concatenate(f).astype(np.float64)

    return predict


def measure_potential_artifact(signature, keras_model, cfg: dict, *, data_dir=None, num_rotations: int = 4,
                               seed: int = 0) -> dict:
    """Test MAEs (meV, meV/Å), E(3) and permutation symmetry and Keras parity of a potential's
    ``serving_default``, on ``test_01`` of the run's molecule."""
    from keras_relaxeq.testing import potential_symmetry_errors

    data = recipe_test_frames(cfg, data_dir)
    numbers = np.tile(data.atomic_numbers, (data.num_frames, 1))
    predict = _served(signature)
    energy, forces = predict(data.positions, numbers)
    e_mae = float(np.mean(np.abs(energy - data.energy)) * KCAL_MOL_TO_MEV)
    f_mae = float(np.mean(np.abs(forces - data.forces.astype(np.float64))) * KCAL_MOL_TO_MEV)
    m = min(SYMMETRY_FRAMES, data.num_frames)
    symmetry = potential_symmetry_errors(predict, data.positions[:m], numbers[:m], num_rotations=num_rotations,
                                         seed=seed, energy_reference=float(keras_model.energy_mean))
    p = min(PARITY_FRAMES, data.num_frames)
    out = keras_model({"positions": data.positions[:p], "atomic_numbers": numbers[:p]})
    mean = keras_model.energy_mean
    keras_e = np.asarray(out["energy"], np.float64) - mean
    keras_f = np.asarray(out["forces"], np.float64)
    diff = max(float(np.abs(keras_e - (energy[:p] - mean)).max()), float(np.abs(keras_f - forces[:p]).max()))
    return {
        "num_test": int(data.num_frames), "labels": data.labels, "energy_mae_mev": e_mae,
        "force_mae_mev_per_angstrom": f_mae, "symmetry": symmetry, "symmetry_frames": m,
        "keras_max_abs_diff": diff, "keras_scale": max(float(np.abs(keras_e).max()), float(np.abs(keras_f).max())),
        "parity_frames": p,
    }


def _metrics(meas: dict, cfg: dict) -> list[dict]:
    art = "measured on the published SavedModel (extracted archive, serving_default)"
    split = (f"all {meas['num_test']} frames of rmd17_{cfg['molecule']}_test_01.npz with the "
             f"{'original MD17' if meas['labels'] == 'md17' else 'revised MD17'} labels (1 kcal/mol = "
             f"{KCAL_MOL_TO_MEV} meV)")
    sym = meas["symmetry"]
    moves = (f"{sym['num_rotations']} Haar-random rotations and one reflection (each with a random translation "
             f"t ~ N(0, {sym['translation_scale']:g}^2) Å), one translation alone and one random permutation of "
             f"the atoms, on the first {sym['num_molecules']} test frames (moves in float64, fed as float32)")
    return [
        {"name": "energy_mae_mev", "value": float(f"{meas['energy_mae_mev']:.5g}"), "split": "test",
         "protocol": f"mean |E_pred - E| over {split}; {art}"},
        {"name": "force_mae_mev_per_angstrom", "value": float(f"{meas['force_mae_mev_per_angstrom']:.5g}"),
         "split": "test", "protocol": f"mean |F_pred - F| over every atom and component of {split}; {art}"},
        {"name": "energy_symmetry_max_abs_kcal_mol", "value": float(f"{sym['energy_max_abs']:.3e}"),
         "split": "test", "protocol": f"max |E(g x) - E(x)| (kcal/mol) over {moves}; {art}"},
        {"name": "force_symmetry_max_abs", "value": float(f"{sym['force_max_abs']:.3e}"), "split": "test",
         "protocol": f"max |F(g x) - g F(x)| (kcal/mol/Å; F rotated with the molecule, permuted with its atoms) "
                     f"over {moves}; {art}"},
        keras_parity_metric(meas, "test", "(E - energy_mean, F)",
                            f"the first {meas['parity_frames']} test frames"),
    ]


class MD17Run(RecipeRun):
    """A ``recipes/md17.py`` run: a (relaxed, projected) Equiformer potential of one MD17 molecule."""

    recipe = RECIPE
    default_citation = DEFAULT_CITATION
    data_licence = ("The revised MD17 data (Christensen and von Lilienfeld 2020, split 01, with the original MD17 "
                    "labels of the same frames) are CC0.")
    only_options = ("data_dir",)
    input_checks = INPUT_CHECKS  # shape, finite, composition

    def __init__(self, *args, **kwargs):
        import keras_relaxeq.models.equiformer  # noqa: F401  (registers Equiformer: the run's files load)

        super().__init__(*args, **kwargs)
        self.config = None

    def default_name(self) -> str:
        return default_name(self.cfg)

    def prepare(self, model):
        model, self.config = rebuild_potential(model, self.summary, data_dir=self.options.get("data_dir"))
        return model

    def export(self, model, export_dir, name, version):
        return export_potential_saved_model(model, export_dir, name, version)

    def measure(self, signature, model):
        meas = measure_potential_artifact(signature, model, self.cfg, data_dir=self.options.get("data_dir"),
                                          num_rotations=self.num_rotations, seed=self.seed)
        if not (np.isfinite(meas["energy_mae_mev"]) and np.isfinite(meas["force_mae_mev_per_angstrom"])):
            raise PublishError("the artifact's test MAEs are not finite.")
        check_parity(meas, "energies and forces")
        sym = meas["symmetry"]
        for what in ("energy", "force"):
            check_symmetry_error(sym[f"{what}_max_abs"], sym[f"{what}_scale"],
                                 f"{what} is not E(3) / permutation symmetric on test frames")
        return meas

    def entry_fields(self, model, meas, params):
        from keras_relaxeq.models.potential import formula

        cfg, s = self.cfg, self.summary
        n = len(model.atomic_numbers)
        inputs = input_signature(n)
        scaler = s["target_scaler"]
        return {
            "task": TASK,
            "description": (f"Equiformer ({cfg['blocks']} blocks, width {cfg['width']}) potential of "
                            f"{cfg['molecule']} ({formula(model.atomic_numbers)}): energy and forces (-dE/dpos) "
                            "from atom positions, "
                            + ("trained with constraint relaxation and projected" if cfg.get("relaxed")
                               else "trained without relaxation")
                            + f"; exactly E(3)-invariant energy; {s.get('epochs_run')} epochs of the CPU protocol."),
            "architecture": {"class": "keras_relaxeq.models.equiformer.equiformer", "config": self.config,
                             "params": params,
                             "keras_class": f"{type(model).__module__}.{type(model).__name__}"},
            "input": dict(name="positions", **inputs["positions"],
                          preprocessing="none: Cartesian positions in Å, as in the MD17 files (no centring needed: "
                                        "the model is translation invariant)"),
            "inputs": inputs,
            "outputs": {"energy": {"dtype": "float64", "shape": [None], "layout": "[batch]: energy in kcal/mol"},
                        "forces": {"dtype": "float32", "shape": [None, n, 3],
                                   "layout": "[batch, atoms, xyz]: forces -dE/dpos in kcal/mol/Å"}},
            "molecule": {"name": cfg["molecule"], "formula": formula(model.atomic_numbers),
                         "atomic_numbers": [int(z) for z in model.atomic_numbers], "labels": meas["labels"]},
            "targets": {"energy_mean": float(scaler["energy_mean"]), "scale": float(scaler["scale"]),
                        "units": "kcal/mol, kcal/mol/Å",
                        "note": "the network's standardised outputs are mapped to E = e * scale + energy_mean, "
                                "F = f * scale inside the model"},
            "metrics": _metrics(meas, cfg),
            "training": {
                "relaxed": bool(cfg.get("relaxed")), "budget": "cpu_protocol" if is_cpu_protocol(cfg) else "published",
                "energy_mae_mev": s.get("energy_mae_mev"),
                "force_mae_mev_per_angstrom": s.get("force_mae_mev_per_angstrom"),
                "best_projected_val_loss": s.get("best_projected_val_loss"),
            },
        }

    def render_card(self, entry, meas, command, source, params):
        return render_card(entry, self.summary, meas, command, source, self.model_file, params)

    def report(self, meas):
        sym = meas["symmetry"]
        return (f"energy MAE {meas['energy_mae_mev']:.2f} meV, force MAE {meas['force_mae_mev_per_angstrom']:.2f} "
                f"meV/Å on {meas['num_test']} test frames; symmetry errors energy {sym['energy_max_abs']:.1e} "
                f"kcal/mol, forces {sym['force_max_abs']:.1e}")


def is_cpu_protocol(cfg: dict) -> bool:
    return bool(float(cfg["width"]) < PUBLISHED["width"] or int(cfg["epochs"]) < PUBLISHED["epochs"]
                or cfg.get("max_train_batches"))


def gpu_command(cfg: dict) -> str:
    """The published budget: the recipe command without ``--width``, ``--epochs`` and ``--max-train-batches``."""
    arm = "relaxed" if cfg.get("relaxed") else "standard"
    return (f"python {RECIPE} --molecule {cfg['molecule']} {'--relaxed' if cfg.get('relaxed') else '--no-relaxed'} "
            f"--seed {cfg['seed']} --output-dir runs/md17/{cfg['molecule']}_{arm}_seed{cfg['seed']}")


def render_card(entry: dict, summary: dict, meas: dict, command: str, command_source: str, model_file: str,
                params: int) -> str:
    """The model card of an interatomic potential entry."""
    cfg = summary["config"]
    name, version = entry["name"], entry["version"]
    mol = entry["molecule"]
    n = len(mol["atomic_numbers"])
    relaxed = bool(cfg.get("relaxed"))
    sym = meas["symmetry"]
    published = EQUIFORMER_MD17.get(cfg["molecule"])
    metrics = card_metrics_lines(entry, summary)
    limits = []
    if is_cpu_protocol(cfg):
        limits.append(
            f"A small CPU budget (width {cfg['width']}, {summary.get('epochs_run')} epochs"
            + (f" of {cfg['max_train_batches']} batches" if cfg.get("max_train_batches") else "")
            + "), far below the published "
            f"one (width 1, {PUBLISHED['epochs']} epochs): the MAEs are not comparable with Equiformer's"
            + (f" ({published[0]} meV / {published[1]} meV/Å for {cfg['molecule']} at the full budget)."
               if published else "."))
    limits += [f"One training run (seed {cfg['seed']}); no error bars.",
               f"A potential of {cfg['molecule']} only ({mol['formula']}, {n} atoms): other molecules are refused "
               "(the energy offset belongs to this one); geometries far from the MD17 trajectory (T = 500 K) were "
               "not evaluated.",
               f"Trained on the {'original MD17' if mol['labels'] == 'md17' else 'revised MD17'} labels of 950 frames "
               "of train_01 (50 for validation)."]
    lines = [
        f"# {name} v{version}", "",
        f"Equiformer potential of {cfg['molecule']} ({mol['formula']}): from the positions of its {n} atoms it gives "
        "the energy and the forces (`-dE/dpos` by automatic differentiation: conservative). The energy is exactly "
        "invariant to rotations, reflections and translations of the molecule and to the order of its atoms; the "
        "forces rotate and permute with it. The network was "
        + ("trained with constraint relaxation (the reference's position-aware MLP branch on every block's "
           f"feed-forward output, `{cfg.get('schedule')}` theta schedule, {cfg.get('penalty')} penalty) and then "
           "projected: the published model has no relaxation branches." if relaxed
           else "trained as the standard (unrelaxed) Equiformer."), "",
        "## Architecture", "",
        f"- builder: `{entry['architecture']['class']}` with "
        f"`{json.dumps(entry['architecture']['config'], sort_keys=True)}`, wrapped in "
        "`keras_relaxeq.models.potential.MoleculePotential` (units, input checks)",
        f"- {cfg['blocks']} blocks of equivariant graph attention, node irreps scaled by {cfg['width']}, spherical "
        f"harmonics up to l = 2, cutoff 5 Å; {params:,} parameters",
        f"- inputs: `positions` float32 `[batch, {n}, 3]` (Å), `atomic_numbers` int32 `[batch, {n}]` "
        f"({mol['atomic_numbers']} in any order); outputs: `energy` float64 `[batch]` (kcal/mol), `forces` float32 "
        f"`[batch, {n}, 3]` (kcal/mol/Å)",
        f"- targets: E = e * {entry['targets']['scale']:.6g} {'-' if entry['targets']['energy_mean'] < 0 else '+'} "
        f"{abs(entry['targets']['energy_mean']):.10g} kcal/mol, F = f * {entry['targets']['scale']:.6g} "
        "(the training frames' energy mean and standard deviation)", "",
        "## Training", "", *card_command_lines(command, command_source), "",
        f"- budget: {'CPU protocol (docs/experiments/md17.md)' if is_cpu_protocol(cfg) else 'published'}: width "
        f"{cfg['width']}, {summary.get('epochs_run')} epochs (configured {cfg['epochs']}, {cfg['warmup_epochs']} "
        f"warm-up), batch {cfg['batch']}"
        + (f", {cfg['max_train_batches']} random batches per epoch ({int(cfg['max_train_batches']) * int(cfg['batch'])}"
           " of the 950 training frames, a new draw each epoch)" if cfg.get("max_train_batches") else "")
        + f", AdamW lr {cfg['lr']} cosine, weight decay {cfg['weight_decay']}, loss "
        f"{cfg['energy_weight']} x L1(energy) + {cfg['force_weight']} x L2-MAE(forces) on standardised targets, "
        f"seed {cfg['seed']}",
        "- relaxation: " + (f"`{cfg['schedule']}` theta schedule on a {cfg.get('theta_epochs') or cfg['epochs']}-"
                             f"epoch clock, {cfg['penalty']} penalty ({cfg['angle']} degrees) weight "
                             f"{cfg['lambda_lie']}, lambda_proj {cfg['lambda_proj']}" if relaxed else "off"),
        f"- published model file: `{model_file}` of the run (the projected model with the best validation loss, "
        f"epoch {summary.get('best_epoch')})",
        f"- the recipe's own test MAEs (summary.json): energy {_fmt(summary.get('energy_mae_mev'), 3)} meV, forces "
        f"{_fmt(summary.get('force_mae_mev_per_angstrom'), 3)} meV/Å",
        metrics[0], "",
        "The published budget (a GPU):", "", "```sh", gpu_command(cfg), "```",
        *metrics[1:], "",
        f"Energy MAE {meas['energy_mae_mev']:.3f} meV, force MAE {meas['force_mae_mev_per_angstrom']:.3f} meV/Å on "
        f"{meas['num_test']} test frames, recomputed on the artifact (`relaxeq zoo publish`; again with "
        f"`python -m keras_relaxeq.zoo.publish.md17 {name}`)"
        + (f"; Equiformer (Liao and Smidt 2023, full budget): {published[0]} meV, {published[1]} meV/Å." if published
           else "."),
        f"Symmetry: energy changes by at most {sym['energy_max_abs']:.1e} kcal/mol and forces by "
        f"{sym['force_max_abs']:.1e} kcal/mol/Å (force scale {sym['force_scale']:.3g}) under rotations, a reflection, "
        "translations and a permutation of the atoms: float32 round-off only.", "",
        *card_closing_lines(entry, limits, [
            f"model = zoo.load({name!r}, version={version})       # verified download",
            f"z = np.array([{mol['atomic_numbers']}], np.int32)",
            f"positions = np.random.default_rng(0).normal(size=[1, {n}, 3]).astype(np.float32)  # Å",
            "out = model(positions=positions, atomic_numbers=z)   # energy [1] kcal/mol, forces [1, "
            f"{n}, 3]",
            f"path = zoo.download({name!r}, version={version})  # or, with TensorFlow only:",
            "serve = tf.saved_model.load(str(path)).signatures['serving_default']",
            "out = serve(positions=tf.constant(positions), atomic_numbers=tf.constant(z))",
        ], MD17Run.data_licence, verify_note="     # sha256, signature, E(3) + permutation symmetry, input checks"),
    ]
    return "\n".join(lines)


def evaluate_entry(name: str, version=None, *, index=None, data_dir=None, cache_dir=None, seed: int = 0) -> dict:
    """The published artifact of ``name`` measured again on ``test_01`` (as ``relaxeq zoo publish`` did):
    ``{metric name: (published value, measured value)}``."""
    from keras_relaxeq.zoo.loading import load
    from keras_relaxeq.zoo.registry import load_index

    entry = load_index(index).get(name, version)
    if not entry.is_potential_model:
        raise PublishError(f"{entry.name} v{entry.version} is not an interatomic potential entry.")
    mol = entry.raw["molecule"]
    cfg = {"molecule": mol["name"], "labels": mol["labels"], "data_dir": data_dir}
    served = load(entry.name, entry.version, index=index, cache_dir=cache_dir, progress=False)
    keras_model = load(entry.name, entry.version, index=index, cache_dir=cache_dir, progress=False, as_keras=True)
    meas = measure_potential_artifact(served.signature, keras_model, cfg, data_dir=data_dir, seed=seed)
    measured = {m["name"]: m["value"] for m in _metrics(meas, cfg)}
    return {m["name"]: (m["value"], measured.get(m["name"])) for m in entry.metrics}


def main(argv=None) -> int:
    """``python -m keras_relaxeq.zoo.publish.md17 NAME [--version N] [--data-dir DIR]``: the published MAEs,
    symmetry errors and Keras parity of an entry recomputed on its artifact."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m keras_relaxeq.zoo.publish.md17",
                                description="Measure a published MD17 potential again on test_01.")
    p.add_argument("name", help="e.g. equiformer_e3_md17ethanol")
    p.add_argument("--version", type=int, default=None)
    p.add_argument("--data-dir", default=None, help="folder of the rmd17 npz files (default: $KERAS_RELAXEQ_DATA)")
    p.add_argument("--index", default=None, help="catalogue (default: the repository's zoo/index.json)")
    args = p.parse_args(argv)
    return print_measured_again(evaluate_entry, name=args.name, version=args.version, index=args.index,
                                data_dir=args.data_dir)


__all__ = ["MD17Run", "RECIPE", "architecture_config", "default_name", "evaluate_entry",
           "export_potential_saved_model", "input_signature", "measure_potential_artifact", "rebuild_potential",
           "render_card"]


if __name__ == "__main__":
    raise SystemExit(main())
