"""Publishing a ``recipes/segnn_nbody.py`` run (SEGNN on charged N-body) as ``segnn_o3_nbody``.

:func:`keras_relaxeq.zoo.publish.publish_run` drives the steps; :class:`NBodyRun` supplies what
is specific to the N-body recipe (``recipe`` ``recipes/segnn_nbody.py`` in the run's summary):

* export: serving inputs ``loc`` / ``vel`` float32 ``[None, 5, 3]`` and ``charges`` float32
  ``[None, 5, 1]``, output ``loc`` (the predicted positions 1,000 steps later, ``[None, 5, 3]``);
* measurements on the extracted artifact (:func:`measure_nbody_artifact`): the test MSE on the
  recipe's test pipeline (``keras_relaxeq.datasets.nbody.recipe_dataset``: the run's test
  trajectories, batches and per-batch rotations), the E(3) equivariance error on test systems
  (rotations, a reflection, translations of the positions:
  ``keras_relaxeq.testing.e3_equivariance_errors``), and the largest difference to the Keras model;
* the entry fields (task ``nbody_regression``, ``input`` + ``inputs``) and the model card.
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
)

RECIPE = "recipes/segnn_nbody.py"
NAME = "segnn_o3_nbody"
TASK = "nbody_regression"
DEFAULT_CITATION = (
    "Pertigkiozoglou, Chatzipantazis, Trivedi, Daniilidis: Improving Equivariant Model Training "
    "via Constraint Relaxation, NeurIPS 2024; Brandstetter, Hesselink, van der Pol, Bekkers, "
    "Welling: Geometric and Physical Quantities Improve E(3) Equivariant Message Passing, ICLR "
    "2022; Satorras, Hoogeboom, Welling: E(n) Equivariant Graph Neural Networks, ICML 2021 (data)")
PREPROCESSING = ("none: raw simulator units (positions of charged particles in a box of half-size "
                 "5, speeds of order 0.5), charges -1 or +1; inputs are the state after 3,100 "
                 "integration steps (frame 30), the target the positions 1,000 steps later")
#: the published recipe's settings (recipes/segnn_nbody.py DEFAULTS), for the card's limits
PUBLISHED = {"epochs": 1000, "train_samples": 3000, "test_samples": 2000, "hidden": 64,
             "layers": 4}
#: translation scale of the equivariance measurement on test systems (as the recipe's check)
TRANSLATION_SCALE = 5.0


def architecture_config(cfg: dict) -> dict:
    """Arguments of ``keras_relaxeq.models.segnn`` that rebuild the projected model (mirrors
    ``build_model`` of ``recipes/segnn_nbody.py``, with ``relaxed=False``)."""
    from keras_relaxeq.datasets.nbody import NUM_PARTICLES

    return {"num_layers": int(cfg["layers"]), "hidden_features": int(cfg["hidden"]),
            "lmax_hidden": int(cfg["lmax_hidden"]), "lmax_attr": int(cfg["lmax_attr"]),
            "norm": None if cfg["norm"] == "none" else cfg["norm"], "num_nodes": NUM_PARTICLES,
            "relaxed": False}


def input_signature() -> dict:
    """``{name: {"dtype", "shape", "layout"}}`` of the serving inputs."""
    from keras_relaxeq.datasets.nbody import NUM_PARTICLES

    n = NUM_PARTICLES
    return {"loc": {"dtype": "float32", "shape": [None, n, 3],
                    "layout": "[batch, particles, xyz]: positions"},
            "vel": {"dtype": "float32", "shape": [None, n, 3],
                    "layout": "[batch, particles, xyz]: velocities"},
            "charges": {"dtype": "float32", "shape": [None, n, 1],
                        "layout": "[batch, particles, 1]: charges (-1 or +1)"}}


def _positions_output(y) -> dict:
    from keras_relaxeq.export.serving import regression_outputs

    return regression_outputs({"loc": y})


def export_nbody_saved_model(model, base_dir, name: str, version: int, **kwargs):
    """``export_saved_model`` with the N-body serving signature: inputs ``loc``, ``vel``,
    ``charges`` (:func:`input_signature`), output ``loc`` (the model's predicted positions).
    ``kwargs`` go to ``export_saved_model`` (default ``write_config=False``)."""
    from keras_relaxeq.export.serving import export_saved_model

    specs = {k: tuple(v["shape"]) for k, v in input_signature().items()}
    kwargs.setdefault("write_config", False)
    return export_saved_model(model, base_dir, name, version, input_signature=specs,
                              outputs=_positions_output, **kwargs)


def _predict(signature, batch_size: int = 100):
    """``predict(loc, vel, charges)`` of a ``serving_default`` signature, batched, float64."""
    import tensorflow as tf

    def predict(loc, vel, charges):
        out = [signature(loc=tf.constant(loc[i:i + batch_size], tf.float32),
                         vel=tf.constant(vel[i:i + batch_size], tf.float32),
                         charges=tf.constant(charges[i:i + batch_size], tf.float32))["loc"].numpy()
               for i in range(0, len(loc), batch_size)]
        return np.concatenate(out).astype(np.float64)

    return predict


def recipe_test_samples(cfg: dict, max_samples=None) -> tuple[dict, np.ndarray]:
    """The first ``max_samples`` (default: all) test samples of the recipe's test pipeline for a
    run's ``config``: ``({"loc", "vel", "charges"}, target)`` float32 NumPy arrays, rotated per
    batch exactly as the recipe evaluated them.

    Sets TensorFlow's global seed to ``config["seed"]`` first, as the recipe does before it
    builds its pipelines (the per-batch rotations depend on it).
    """
    import tensorflow as tf

    from keras_relaxeq.datasets.nbody import recipe_dataset

    tf.random.set_seed(int(cfg["seed"]))
    xs, ys, count = [], [], 0
    for x, y in recipe_dataset(cfg, "test"):
        xs.append({k: np.asarray(v) for k, v in x.items()})
        ys.append(np.asarray(y))
        count += len(ys[-1])
        if max_samples is not None and count >= max_samples:
            break
    n = count if max_samples is None else min(count, int(max_samples))
    x = {k: np.concatenate([b[k] for b in xs])[:n] for k in ("loc", "vel", "charges")}
    return x, np.concatenate(ys)[:n]


def measure_nbody_artifact(signature, keras_model, cfg: dict, *, max_test_samples=None,
                           num_rotations: int = 4, equivariance_samples: int = 16,
                           parity_samples: int = 32, seed: int = 0) -> dict:
    """Test MSE, E(3) equivariance and Keras parity of an N-body ``serving_default``."""
    from keras_relaxeq.testing import e3_equivariance_errors

    x, target = recipe_test_samples(cfg, max_test_samples)
    predict = _predict(signature, int(cfg["batch"]))
    pred = predict(x["loc"], x["vel"], x["charges"])
    mse = float(np.mean((pred - target.astype(np.float64)) ** 2))

    m = min(int(equivariance_samples), len(target))
    eq = e3_equivariance_errors(predict, x["loc"][:m], x["vel"][:m], x["charges"][:m],
                                num_rotations=num_rotations, seed=seed,
                                translation_scale=TRANSLATION_SCALE)

    p = min(int(parity_samples), len(target))
    keras_pred = np.asarray(keras_model.predict({k: v[:p] for k, v in x.items()},
                                                batch_size=int(cfg["batch"]), verbose=0),
                            np.float64)
    return {"num_test": int(len(target)), "test_mse": mse,
            "equivariance": eq, "equivariance_systems": m,
            "keras_max_abs_diff": float(np.abs(keras_pred - pred[:p]).max()),
            "keras_scale": float(np.abs(keras_pred).max()), "parity_systems": p}


def _metrics(meas: dict, cfg: dict, seed: int) -> list[dict]:
    n, total, eq = meas["num_test"], int(cfg["test_samples"]), meas["equivariance"]
    art = "measured on the published SavedModel (extracted archive, serving_default)"
    split = (f"the first {n} test trajectories of the charged N-body data set (stream seed 43, "
             "keras_relaxeq.datasets.nbody)"
             + (f", of the run's {total}" if n < total else "")
             + f", batched by {cfg['batch']} with one Haar-random rotation per batch as "
             "recipes/segnn_nbody.py evaluates them (keras_relaxeq.datasets.nbody."
             f"recipe_dataset, seed {int(cfg['seed']) + 2}, TF global seed {cfg['seed']})")
    moves = (f"{eq['num_rotations']} Haar-random rotations, one reflection (a random rotation "
             "composed with z -> -z), each with a random translation t ~ N(0, "
             f"{eq['translation_scale']:g}^2) of the positions, and one translation alone (seed "
             f"{seed}; moves applied in float64, fed as float32)")
    return [
        {"name": "test_mse", "value": float(f"{meas['test_mse']:.6g}"), "split": "test",
         "protocol": f"mean squared error of the predicted positions (frame 40) over every "
                     f"particle and coordinate, {split}; {art}"},
        {"name": "equivariance_max_abs_error", "value": float(f"{eq['max_abs']:.3e}"),
         "split": "test",
         "protocol": f"max |f(Q x + t) - (Q f(x) + t)| over the first {eq['num_systems']} test "
                     f"systems x (positions moved by Q x + t, velocities by Q x, charges "
                     f"unchanged) and {moves}; {art}"},
        {"name": "equivariance_relative_error", "value": float(f"{eq['relative']:.3e}"),
         "split": "test",
         "protocol": "equivariance_max_abs_error / max |Q f(x) + t| over the same systems and "
                     f"moves (scale {eq['scale']:.4g}); {art}"},
        keras_parity_metric(meas, "test", "positions",
                            f"the first {meas['parity_systems']} test systems"),
    ]


class NBodyRun(RecipeRun):
    """A ``recipes/segnn_nbody.py`` run: SEGNN predicting charged-particle positions."""

    recipe = RECIPE
    default_citation = DEFAULT_CITATION
    data_licence = ("The N-body data are simulated locally (keras_relaxeq.datasets.nbody, the "
                    "charged-particle simulator of EGNN / NRI).")
    only_options = ("max_test_samples",)

    def default_name(self) -> str:
        return NAME

    def export(self, model, export_dir, name, version):
        return export_nbody_saved_model(model, export_dir, name, version)

    def measure(self, signature, model):
        meas = measure_nbody_artifact(
            signature, model, self.cfg, max_test_samples=self.options.get("max_test_samples"),
            num_rotations=self.num_rotations,
            equivariance_samples=self.options["equivariance_samples"], seed=self.seed)
        if not np.isfinite(meas["test_mse"]):
            raise PublishError(f"the artifact's test MSE is {meas['test_mse']}: the model "
                               "predicts non-finite positions.")
        check_parity(meas, "positions")
        check_symmetry_error(meas["equivariance"]["max_abs"], meas["equivariance"]["scale"],
                             "positions are not E(3) equivariant on test systems")
        return meas

    def _recipe_test_mse(self):
        """The recipe's own test MSE of the published model file, if it reported one."""
        key = {"best_projected.keras": "best_test_mse",
               "projected.keras": "final_projected_test_mse"}.get(self.model_file)
        return self.summary.get(key) if key else None

    def entry_fields(self, model, meas, params):
        cfg, s = self.cfg, self.summary
        relaxed = cfg.get("relaxed", True)
        inputs = input_signature()
        return {
            "task": TASK,
            "description": (f"SEGNN ({cfg['layers']} layers, {cfg['hidden']} hidden scalars) on "
                            "charged N-body (5 particles), "
                            + ("trained with constraint relaxation and projected" if relaxed
                               else "trained without relaxation")
                            + f"; E(3)-equivariant; {s.get('epochs_run')} epochs."),
            "architecture": {"class": "keras_relaxeq.models.segnn",
                             "config": architecture_config(cfg),
                             "keras_class": f"{type(model).__module__}.{type(model).__name__}",
                             "params": params},
            "input": dict(name="loc", **inputs["loc"], preprocessing=PREPROCESSING),
            "inputs": inputs,
            "outputs": {"loc": {"dtype": "float32", "shape": inputs["loc"]["shape"],
                                "layout": "[batch, particles, xyz]: predicted positions 1,000 "
                                          "integration steps later"}},
            "metrics": _metrics(meas, cfg, self.seed),
            "training": {
                "best_projected_val_mse": s.get("best_projected_val_mse"),
                "best_test_mse": s.get("best_test_mse"),
                "final_projected_val_mse": s.get("final_projected_val_mse"),
                "final_projected_test_mse": s.get("final_projected_test_mse"),
                "val_mse_protocol": f"recipe's projected validation MSE (first "
                                    f"{cfg.get('val_samples')} validation trajectories, one "
                                    "rotation per batch)",
            },
        }

    def render_card(self, entry, meas, command, source, params):
        return render_card(entry, self.summary, meas, command, source, self.model_file, params,
                           recipe_test_mse=self._recipe_test_mse())

    def report(self, meas):
        eq = meas["equivariance"]
        return (f"test MSE {meas['test_mse']:.5g} on {meas['num_test']} test trajectories; "
                f"E(3) equivariance {eq['max_abs']:.2e} (relative {eq['relative']:.2e})")


def _sci(v) -> str:
    return "n/a" if v is None else f"{float(v):.2e}"


def _limits(cfg: dict, summary: dict, meas: dict, model_file: str) -> list[str]:
    limits = []
    epochs_run, epochs_cfg = summary.get("epochs_run"), cfg.get("epochs")
    if epochs_cfg and epochs_run is not None and int(epochs_run) < int(epochs_cfg):
        limits.append(f"Training stopped after {epochs_run} of {epochs_cfg} epochs.")
    elif epochs_run is not None and int(epochs_run) < PUBLISHED["epochs"]:
        unit = "epoch" if int(epochs_run) == 1 else "epochs"
        limits.append(f"Trained for {epochs_run} {unit}, not the {PUBLISHED['epochs']} of the published recipe.")
    if int(cfg["train_samples"]) < PUBLISHED["train_samples"]:
        limits.append(f"Trained on {cfg['train_samples']} trajectories, not the "
                      f"{PUBLISHED['train_samples']:,} of the published experiments.")
    if int(cfg["hidden"]) < PUBLISHED["hidden"] or int(cfg["layers"]) < PUBLISHED["layers"]:
        limits.append(f"Smaller network than the published one ({cfg['layers']} layers, "
                      f"{cfg['hidden']} hidden scalars instead of {PUBLISHED['layers']} and "
                      f"{PUBLISHED['hidden']}).")
    if meas["num_test"] < PUBLISHED["test_samples"]:
        limits.append(f"The test MSE is over {meas['num_test']} test trajectories, not the "
                      f"{PUBLISHED['test_samples']:,} of the published protocol.")
    if model_file.startswith("best"):
        limits.append("The published epoch was selected on the validation MSE of the projected "
                      "model (never on the test set).")
    limits.append("Fixed to 5 particles (inputs [batch, 5, ...]) and to the charged-particle "
                  "dynamics of the EGNN / SEGNN nbody_small data set, predicting 1,000 "
                  "integration steps ahead; other particle counts, horizons or force laws were "
                  "not evaluated.")
    limits.append("The data set is regenerated locally (keras_relaxeq.datasets.nbody); bitwise "
                  "equality with the EGNN authors' files is not checked.")
    return limits


def render_card(entry: dict, summary: dict, meas: dict, command: str, command_source: str,
                model_file: str, params: int, *, recipe_test_mse=None) -> str:
    """The model card of an N-body entry."""
    cfg = summary["config"]
    name, version = entry["name"], entry["version"]
    relaxed = cfg.get("relaxed", True)
    eq_train = summary.get("equivariance_of_best_projected") or {}
    eq = meas["equivariance"]
    epochs_run = summary.get("epochs_run")
    reproduced = ""
    if recipe_test_mse is not None:
        reproduced = (f" The recipe reported a test MSE of {_fmt(float(recipe_test_mse), 6)} "
                      f"for this model file at the end of training; the artifact's is "
                      f"{meas['test_mse']:.6f}.")
    lines = [
        f"# {name} v{version}",
        "",
        "SEGNN (steerable E(3)-equivariant graph neural network) for the charged N-body task: "
        "from the positions, velocities and charges of 5 charged particles it predicts their "
        "positions 1,000 integration steps later. The predictions are exactly equivariant to "
        "E(3): rotating, reflecting or translating the input system moves the predicted "
        "positions the same way. The network was"
        + (" trained with constraint relaxation (relaxation branches on the node-update tensor "
           f"products, `{cfg.get('schedule')}` theta schedule, Lie-derivative / projection "
           "penalties) and then projected onto the equivariant subspace"
           if relaxed else " trained as a plain (unrelaxed) SEGNN")
        + ". The published model is the projected one: it has no relaxation branches.",
        "",
        "## Architecture",
        "",
        f"- builder: `{entry['architecture']['class']}` with "
        f"`{json.dumps(entry['architecture']['config'], sort_keys=True)}`",
        f"- {cfg['layers']} message-passing layers, {cfg['hidden']} hidden scalars "
        f"(weight-balanced irreps, lmax {cfg['lmax_hidden']}), attributes up to lmax "
        f"{cfg['lmax_attr']}, norm `{cfg['norm']}`, {params:,} parameters (projected model)",
        "- inputs: `loc` float32 `[batch, 5, 3]` (positions), `vel` float32 `[batch, 5, 3]` "
        "(velocities), `charges` float32 `[batch, 5, 1]` (-1 or +1); any batch size",
        "- output: `loc` float32 `[batch, 5, 3]`, the predicted positions",
        f"- preprocessing: {PREPROCESSING}",
        "",
        "## Training",
        "",
        *card_command_lines(command, command_source),
        "",
        f"- epochs run: {epochs_run} (configured {cfg.get('epochs')}); batch {cfg.get('batch')}, "
        f"Adam lr {cfg.get('lr')}, weight decay {cfg.get('weight_decay')}, seed {cfg.get('seed')}, "
        "one random rotation per training batch",
        f"- data: {cfg['train_samples']} training, {cfg['val_samples']} validation, "
        f"{cfg['test_samples']} test trajectories",
        f"- relaxation: {'on' if relaxed else 'off'}"
        + (f", schedule `{cfg.get('schedule')}`, lambda_lie {cfg.get('lambda_lie')}, "
           f"lambda_proj {cfg.get('lambda_proj')}" if relaxed else ""),
        f"- published model file: `{model_file}` of the run"
        + (f" (best epoch {summary.get('best_epoch')})" if model_file.startswith("best") else ""),
        f"- training-time projected val MSE (recipe): best "
        f"{_fmt(summary.get('best_projected_val_mse'), 6)}, final "
        f"{_fmt(summary.get('final_projected_val_mse'), 6)}; test MSE of the best projected "
        f"model {_fmt(summary.get('best_test_mse'), 6)}, of the final one "
        f"{_fmt(summary.get('final_projected_test_mse'), 6)}",
        "- training-time equivariance check of the best projected model (recipe): O(3) max "
        f"error {_sci(eq_train.get('o3_max_error'))}, translation max error "
        f"{_sci(eq_train.get('translation_max_error'))}",
        *card_metrics_lines(entry, summary),
        "",
        f"Test MSE {meas['test_mse']:.6f} on {meas['num_test']} test trajectories.{reproduced}",
        "",
        f"E(3) equivariance: max |f(Qx + t) - (Q f(x) + t)| = {eq['max_abs']:.2e} (relative "
        f"{eq['relative']:.2e}) over {eq['num_systems']} test systems; rotations "
        f"{eq['rotation_max_abs']:.2e}, reflection {eq['reflection_max_abs']:.2e}, translation "
        f"{eq['translation_max_abs']:.2e}; float32 round-off only.",
        "",
        *card_closing_lines(entry, _limits(cfg, summary, meas, model_file), [
            f"model = zoo.load({name!r}, version={version})       # verified download",
            "loc = np.zeros([1, 5, 3], np.float32); vel = np.ones([1, 5, 3], np.float32)",
            "charges = np.array([[[1], [-1], [1], [-1], [1]]], np.float32)",
            "positions = model(loc=loc, vel=vel, charges=charges)['loc']   # [1, 5, 3]",
            f"path = zoo.download({name!r}, version={version})  # or, with TensorFlow only:",
            "serve = tf.saved_model.load(str(path)).signatures['serving_default']",
            "out = serve(loc=tf.constant(loc), vel=tf.constant(vel), charges=tf.constant(charges))",
        ], NBodyRun.data_licence, verify_note="     # sha256, signature, E(3) equivariance"),
    ]
    return "\n".join(lines)


__all__ = ["NAME", "NBodyRun", "RECIPE", "architecture_config", "export_nbody_saved_model",
           "input_signature", "measure_nbody_artifact",
           "recipe_test_samples", "render_card"]
