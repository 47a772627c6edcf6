"""Synthetic point clouds of parametric shapes, randomly rotated.

An embedded classification set that needs no download: points sampled on the
surfaces of simple parametric shapes, with random proportions and noise,
centred and scaled to the unit sphere, then rotated by a Haar-random SO(3)
rotation (tensorflow-graphics via :func:`keras_relaxeq.groups.random_rotations`).
"""

from __future__ import annotations

import numpy as np

from keras_relaxeq.datasets.modelnet40 import normalize_point_clouds
from keras_relaxeq.groups.so3 import random_rotations, random_z_rotations

CLASSES = ("sphere", "cube", "cylinder", "cone", "torus", "ellipsoid")


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _sample(name, n, rng):
    if name == "sphere":
        return _unit(rng.normal(size=(n, 3)))
    if name == "ellipsoid":
        return _unit(rng.normal(size=(n, 3))) * np.array([1.0, 0.6, 0.3]) * rng.uniform(0.9, 1.1, 3)
    if name == "cube":
        p = rng.uniform(-1, 1, size=(n, 3))
        face = rng.integers(0, 3, n)
        p[np.arange(n), face] = rng.choice([-1.0, 1.0], n)
        return p
    if name == "cylinder":
        phi = rng.uniform(0, 2 * np.pi, n)
        z = rng.uniform(-1, 1, n) * rng.uniform(0.8, 1.2)
        return np.stack([np.cos(phi), np.sin(phi), z], axis=-1) * np.array([0.6, 0.6, 1.0])
    if name == "cone":
        phi = rng.uniform(0, 2 * np.pi, n)
        h = np.sqrt(rng.uniform(0, 1, n))  # uniform on the lateral surface
        return np.stack([h * np.cos(phi), h * np.sin(phi), 1.0 - 2.0 * h], axis=-1)
    if name == "torus":
        u, v = rng.uniform(0, 2 * np.pi, (2, n))
        ring, tube = 1.0, rng.uniform(0.25, 0.4)
        return np.stack(
            [(ring + tube * np.cos(v)) * np.cos(u), (ring + tube * np.cos(v)) * np.sin(u), tube * np.sin(v)], axis=-1
        )
    raise ValueError(f"Unknown shape {name!r}; known: {CLASSES}.")


def make_shapes(num_samples, num_points=128, rotation="so3", noise=0.01, seed=0, classes=CLASSES):
    """Return ``(points [n, num_points, 3] float32, labels [n] int32)``, balanced over ``classes``.

    Args:
        num_samples: number of clouds.
        num_points: points per cloud.
        rotation: ``"so3"`` (one Haar-random rotation per cloud), ``"z"`` or ``"none"``.
        noise: std of Gaussian jitter added to the points before normalisation.
        seed: makes the set reproducible.
    """
    if num_samples < 1 or num_points < 1:
        raise ValueError(f"make_shapes needs num_samples >= 1 and num_points >= 1, got {num_samples}, {num_points}.")
    if rotation not in ("so3", "z", "none"):
        raise ValueError(f"rotation must be 'so3', 'z' or 'none', got {rotation!r}.")
    rng = np.random.default_rng(seed)
    labels = np.arange(num_samples) % len(classes)
    rng.shuffle(labels)
    clouds = np.stack([_sample(classes[c], num_points, rng) for c in labels])
    clouds = clouds + noise * rng.normal(size=clouds.shape)
    clouds = normalize_point_clouds(clouds).astype(np.float64)
    if rotation != "none":
        draw = random_rotations if rotation == "so3" else random_z_rotations
        rot = draw(num_samples, seed=int(seed), dtype="float64").numpy()
        clouds = np.einsum("npj,nij->npi", clouds, rot)
    return clouds.astype(np.float32), labels.astype(np.int32)
