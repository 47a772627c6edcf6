"""Irreps parsing/arithmetic, SEGNN hidden irreps, and the IrrepsRep O(3) action."""

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

from keras_relaxeq.groups import (
    Irrep,
    Irreps,
    IrrepsRep,
    Representation,
    VectorRep,
    balanced_irreps,
    dimension_balanced_irreps,
    fully_connected_tp_num_weights,
    random_rotations,
    so3_generators,
    so3_generators_numpy,
    weight_balanced_irreps,
    wigner_D,
)

# --------------------------------------------------------------------------------------------
# Irrep / Irreps
# --------------------------------------------------------------------------------------------


def test_irrep_parsing_and_properties():
    assert Irrep("1o") == Irrep(1, -1) == Irrep((1, -1))
    assert Irrep("2y") == Irrep(2, 1) and Irrep("3y") == Irrep(3, -1)
    assert Irrep("2e").dim == 5 and Irrep("0e").is_scalar() and not Irrep("0o").is_scalar()
    assert str(Irrep(3, 1)) == "3e"
    assert list(Irrep("1o") * Irrep("1o")) == [Irrep("0e"), Irrep("1e"), Irrep("2e")]
    assert list(Irrep("2e") * Irrep("1o")) == [Irrep("1o"), Irrep("2o"), Irrep("3o")]
    assert 3 * Irrep("1o") == Irreps("3x1o")
    for bad in ["1", "x1o", "-1e", "1q", ""]:
        with pytest.raises(ValueError):
            Irrep(bad)
    with pytest.raises(ValueError):
        Irrep(1, 0)


@pytest.mark.parametrize(
    "text, canonical, dim, num, lmax",
    [
        ("32x0e+32x1o", "32x0e+32x1o", 32 + 96, 64, 1),
        ("1x1o+1x0e", "1x1o+1x0e", 4, 2, 1),
        ("0e", "1x0e", 1, 1, 0),
        (" 2x0e + 1o + 3x2e ", "2x0e+1x1o+3x2e", 2 + 3 + 15, 6, 2),
        ("0x1o+4x0o", "0x1o+4x0o", 4, 4, 0),
    ],
)
def test_irreps_parse_roundtrip(text, canonical, dim, num, lmax):
    irreps = Irreps(text)
    assert str(irreps) == canonical
    assert Irreps(str(irreps)) == irreps
    assert Irreps(list(irreps)) == irreps and Irreps(irreps) == irreps
    assert irreps.dim == dim and irreps.num_irreps == num and irreps.lmax == lmax
    assert irreps == canonical  # comparison with a string parses it


def test_irreps_iteration_slices_and_arithmetic():
    irreps = Irreps("2x0e+1x1o+3x2e")
    assert [(mul, str(ir)) for mul, ir in irreps] == [(2, "0e"), (1, "1o"), (3, "2e")]
    assert irreps.slices() == [slice(0, 2), slice(2, 5), slice(5, 20)]
    assert irreps.ls == [0, 0, 1, 2, 2, 2]
    assert irreps.count("2e") == 3 and "1o" in irreps and "1e" not in irreps
    assert isinstance(irreps[1:], Irreps) and str(irreps[1:]) == "1x1o+3x2e"
    summed = Irreps("1x0e") + "2x1o"
    assert isinstance(summed, Irreps) and str(summed) == "1x0e+2x1o"
    assert str("1x0e" + Irreps("1x1o")) == "1x0e+1x1o"
    assert str(Irreps("0e+1o") * 2) == "1x0e+1x1o+1x0e+1x1o"
    # simplify merges neighbours only and drops zero multiplicities; it does not sort
    assert str(Irreps("1e+1e+0e").simplify()) == "2x1e+1x0e"
    assert str(Irreps("1e+1e+0e+1e").simplify()) == "2x1e+1x0e+1x1e"
    assert str(Irreps("0x2e+1o+2x1o").simplify()) == "3x1o"
    assert Irreps("2x0e") != Irreps("1x0e+1x0e")
    assert Irreps("2x0e").simplify() == Irreps("1x0e+1x0e").simplify()
    assert Irreps("1o") != Irreps("1e")
    assert len({Irreps("0e+1o"), Irreps("1x0e+1x1o")}) == 1
    # sort like e3nn: by (l, p), with the permutation and its inverse
    res = Irreps("2o + 1e + 0e + 1e").sort()
    assert str(res.irreps) == "1x0e+1x1e+1x1e+1x2o"
    assert res.p == (3, 1, 0, 2) and res.inv == (2, 1, 3, 0)
    assert Irreps("0o+0e").sort().irreps == "0o+0e"  # odd before even at equal l
    assert Irreps("") == Irreps() and Irreps().dim == 0
    with pytest.raises(ValueError):
        Irreps("").lmax  # noqa: B018 (the property raises)
    for bad in ["32x", "x0e", "2x3q", "1.5x0e", "-1x0e"]:
        with pytest.raises(ValueError):
            Irreps(bad)


def test_spherical_harmonics_irreps():
    assert str(Irreps.spherical_harmonics(3)) == "1x0e+1x1o+1x2e+1x3o"
    assert str(Irreps.spherical_harmonics(2, p=1)) == "1x0e+1x1e+1x2e"
    assert Irreps.spherical_harmonics(0) == "0e"


# --------------------------------------------------------------------------------------------
# SEGNN hidden irreps (mirroring RobDHess/Steerable-E3-GNN models/balanced_irreps.py)
# --------------------------------------------------------------------------------------------


def test_fully_connected_tp_num_weights():
    # 0e x 0e -> 0e, 0e x 1o -> 1o, 1o x 0e -> 1o, 1o x 1o -> 0e (1e, 2e not in output)
    n = 5
    assert fully_connected_tp_num_weights(f"{n}x0e+{n}x1o", "0e+1o", f"{n}x0e+{n}x1o") == 4 * n * n
    assert fully_connected_tp_num_weights("64x0e", "1x0e", "64x0e") == 64 * 64
    assert fully_connected_tp_num_weights("3x1o", "2x1o", "4x1e+1x0e+1x1o") == 3 * 2 * (4 + 1)
    assert fully_connected_tp_num_weights("1x0o", "1x0o", "1x0o") == 0  # parity forbids


def test_segnn_nbody_hidden_irreps():
    # SEGNN charged N-body: --hidden_features=64 --lmax_h=1 --lmax_attr=1 --subspace_type=weightbalanced
    hidden = balanced_irreps(64, lmax=1)
    assert hidden == Irreps("32x0e+32x1o")
    assert hidden == weight_balanced_irreps("64x0e", Irreps.spherical_harmonics(1), lmax=1)
    # the smallest n: 4 n^2 >= 64^2 exactly at n = 32
    assert fully_connected_tp_num_weights(hidden, "0e+1o", hidden) == 64 * 64
    smaller = Irreps("31x0e+31x1o")
    assert fully_connected_tp_num_weights(smaller, "0e+1o", smaller) < 64 * 64
    # dimension-balanced variant (--subspace_type=balanced): 32 scalars + int(64/3/2)=10 vectors,
    # remainder 2 to the scalars, total dimension 64
    dim_bal = balanced_irreps(64, lmax=1, balance="dimension")
    assert dim_bal == dimension_balanced_irreps(1, 64) == Irreps("34x0e+10x1o")
    assert dim_bal.dim == 64
    assert dimension_balanced_irreps(2, 100, sh_type=False).dim == 100
    assert [str(ir) for _, ir in dimension_balanced_irreps(2, 100, sh_type=False)] == ["0e", "1e", "1o", "2e", "2o"]
    with pytest.raises(ValueError):
        balanced_irreps(64, 1, balance="nope")


# --------------------------------------------------------------------------------------------
# Generators of the irreps (so3.py conventions, checked through IrrepsRep)
# --------------------------------------------------------------------------------------------


def _expm_algebra(omega, gens):
    """``expm(omega . G)`` for skew ``G``, exact to ~1e-15 via the Hermitian eigendecomposition."""
    a = np.einsum("k,kij->ij", omega, gens)
    lam, vecs = np.linalg.eigh(1j * a)
    return (vecs @ np.diag(np.exp(-1j * lam)) @ vecs.conj().T).real


# wigner_D (so3.py) uses tf.linalg.expm, whose float64 result is off by up to ~3e-9 for
# l >= 3 at some angles (measured against an eigendecomposition); l <= 2 is at ~1e-14.
WIGNER_ATOL = {0: 1e-12, 1: 1e-12, 2: 1e-10, 3: 2e-8, 4: 2e-8}


@pytest.mark.parametrize("l", [0, 1, 2, 3, 4])
def test_so3_generators_lie_algebra(l):
    g = so3_generators_numpy(l)
    d = 2 * l + 1
    assert g.shape == (3, d, d)
    np.testing.assert_allclose(g + np.transpose(g, (0, 2, 1)), 0, atol=1e-14)  # skew
    for a, b, c in [(0, 1, 2), (1, 2, 0), (2, 0, 1)]:
        np.testing.assert_allclose(g[a] @ g[b] - g[b] @ g[a], g[c], atol=1e-12)
    casimir = -sum(g[k] @ g[k] for k in range(3))
    np.testing.assert_allclose(casimir, l * (l + 1) * np.eye(d), atol=1e-12)
    # expm(omega . G_l) == wigner_D(l, expm(omega . L)) in float64
    rng = np.random.default_rng(l)
    vec = so3_generators_numpy(1)
    for omega in [
        rng.normal(size=3),
        0.1 * rng.normal(size=3),
        1e-9 * rng.normal(size=3),
        (np.pi - 1e-7) * np.array([0.6, 0.0, 0.8]),
    ]:
        rot = _expm_algebra(omega, vec)
        np.testing.assert_allclose(rot, scipy.linalg.expm(np.einsum("k,kij->ij", omega, vec)), atol=1e-13)
        np.testing.assert_allclose(wigner_D(l, tf.constant(rot)).numpy(), _expm_algebra(omega, g), atol=WIGNER_ATOL[l])


def test_vector_irrep_is_cartesian():
    np.testing.assert_array_equal(so3_generators_numpy(1), so3_generators(1, tf.float64).numpy())
    lz = so3_generators_numpy(1)[2]
    rot = scipy.linalg.expm(0.5 * lz)
    np.testing.assert_allclose(rot[:2, :2], [[np.cos(0.5), -np.sin(0.5)], [np.sin(0.5), np.cos(0.5)]], atol=1e-14)


# --------------------------------------------------------------------------------------------
# IrrepsRep
# --------------------------------------------------------------------------------------------

REP_IRREPS = "2x0e+1x1o+2x2e+1x0o+1x1e"


def _reflection(normal):
    n = np.asarray(normal, float)
    n = n / np.linalg.norm(n)
    return np.eye(3) - 2 * np.outer(n, n)


def test_irreps_rep_interface_and_generators():
    rep = IrrepsRep(REP_IRREPS)
    irreps = Irreps(REP_IRREPS)
    assert isinstance(rep, Representation)
    assert rep.feature_shape == (irreps.dim,) and rep.dim == irreps.dim == 2 + 3 + 10 + 1 + 3
    gens = rep.generators_numpy()
    assert gens.shape == (3, rep.dim, rep.dim)
    # block diagonal: kron(I_mul, G_l) per block, parity ignored, zero off the blocks
    for sl, (mul, ir) in zip(irreps.slices(), irreps):
        block = np.stack([np.kron(np.eye(mul), g) for g in so3_generators_numpy(ir.l)])
        np.testing.assert_array_equal(gens[:, sl, sl], block)
        mask = np.ones(rep.dim, bool)
        mask[sl] = False
        assert np.all(gens[:, sl][:, :, mask] == 0)
    # commutation relations hold for the whole rep
    np.testing.assert_allclose(gens[0] @ gens[1] - gens[1] @ gens[0], gens[2], atol=1e-12)
    # structured apply_generators == dense generators (both orientations)
    x = tf.random.stateless_normal([2, 4, rep.dim], seed=[1, 2], dtype=tf.float64)
    for transpose, eq in [(False, "kij,bpj->kbpi"), (True, "kji,bpj->kbpi")]:
        out = rep.apply_generators(x, transpose=transpose)
        assert out.shape == (3, 2, 4, rep.dim)
        np.testing.assert_allclose(out.numpy(), np.einsum(eq, gens, x.numpy()), atol=1e-13)
    # float32 works too
    out32 = rep.apply_generators(tf.cast(x, tf.float32))
    assert out32.dtype == tf.float32
    assert IrrepsRep("1x0e+1x0e") == IrrepsRep("2x0e") and IrrepsRep("1o") != IrrepsRep("1e")
    assert hash(IrrepsRep("2x0e")) == hash(IrrepsRep("0e+0e"))
    assert IrrepsRep("3x0e").is_trivial and not IrrepsRep("0o").is_trivial


def test_irreps_rep_transform_matches_exponentiated_generators():
    rep = IrrepsRep(REP_IRREPS)
    gens = rep.generators_numpy()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, rep.dim))
    for t_omega in [rng.normal(size=3), 2.5 * rng.normal(size=3)]:
        rot = _expm_algebra(t_omega, so3_generators_numpy(1))
        expected = np.einsum("ij,bpj->bpi", _expm_algebra(t_omega, gens), x)
        got = rep.transform(tf.constant(rot), tf.constant(x)).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-10)
        np.testing.assert_allclose(rep.matrix(tf.constant(rot)).numpy(), _expm_algebra(t_omega, gens), atol=1e-10)


def test_irreps_rep_higher_degrees():
    rep = IrrepsRep("2x3o+1x4e")
    gens = rep.generators_numpy()
    for a, b, c in [(0, 1, 2), (1, 2, 0), (2, 0, 1)]:
        np.testing.assert_allclose(gens[a] @ gens[b] - gens[b] @ gens[a], gens[c], atol=1e-12)
    omega = np.array([0.4, -1.1, 0.7])
    rot = _expm_algebra(omega, so3_generators_numpy(1))
    x = np.random.default_rng(5).normal(size=(1, rep.dim))
    got = rep.transform(tf.constant(rot), tf.constant(x)).numpy()
    np.testing.assert_allclose(got, x @ _expm_algebra(omega, gens).T, atol=WIGNER_ATOL[4])
    got = rep.transform(tf.constant(-rot), tf.constant(x)).numpy()
    sign = np.concatenate([-np.ones(14), np.ones(9)])
    np.testing.assert_allclose(got, sign * (x @ _expm_algebra(omega, gens).T), atol=WIGNER_ATOL[4])


def test_irreps_rep_batched_and_homomorphism():
    rep = IrrepsRep(REP_IRREPS)
    rots = random_rotations(4, seed=3, dtype=tf.float64)
    x = tf.random.stateless_normal([4, 5, 2, rep.dim], seed=[3, 4], dtype=tf.float64)
    mats = rep.matrix(rots)
    assert mats.shape == (4, rep.dim, rep.dim)
    got = rep.transform(rots, x)
    np.testing.assert_allclose(got.numpy(), np.einsum("bij,bpqj->bpqi", mats.numpy(), x.numpy()), atol=1e-12)
    for b in range(4):  # per-batch element == unbatched
        np.testing.assert_allclose(got[b].numpy(), rep.transform(rots[b], x[b : b + 1])[0].numpy(), atol=1e-12)
    # representation property: rho(R1 R2) = rho(R1) rho(R2), rho(R^T) = rho(R)^T
    r12 = tf.linalg.matmul(rots[0], rots[1])
    np.testing.assert_allclose(rep.matrix(r12).numpy(), mats[0].numpy() @ mats[1].numpy(), atol=1e-10)
    np.testing.assert_allclose(rep.matrix(tf.transpose(rots[2])).numpy(), mats[2].numpy().T, atol=1e-10)
    # float32 features
    got32 = rep.transform(tf.cast(rots, tf.float32), tf.cast(x, tf.float32))
    assert got32.dtype == tf.float32
    np.testing.assert_allclose(got32.numpy(), got.numpy(), atol=1e-5)


def test_irreps_rep_vector_block_matches_vector_rep():
    rots = random_rotations(3, seed=7, dtype=tf.float64)
    x = tf.random.stateless_normal([3, 6, 4 * 3], seed=[5, 6], dtype=tf.float64)
    got = IrrepsRep("4x1o").transform(rots, x)
    ref = VectorRep(4).transform(rots, tf.reshape(x, [3, 6, 4, 3]))
    np.testing.assert_allclose(got.numpy(), tf.reshape(ref, [3, 6, 12]).numpy(), atol=1e-13)
    np.testing.assert_allclose(IrrepsRep("4x1o").generators_numpy(), VectorRep(4).generators_numpy())


def test_irreps_rep_reflections_act_by_parity():
    irreps = Irreps(REP_IRREPS)
    rep = IrrepsRep(irreps)
    x = tf.random.stateless_normal([2, 3, rep.dim], seed=[8, 9], dtype=tf.float64)
    # inversion -I: (l, p) -> p * identity
    parity = np.concatenate([np.full(mul * ir.dim, ir.p, float) for mul, ir in irreps])
    np.testing.assert_allclose(rep.transform(-tf.eye(3, dtype=tf.float64), x).numpy(), x.numpy() * parity, atol=1e-13)
    np.testing.assert_allclose(rep.matrix(-np.eye(3)).numpy(), np.diag(parity), atol=1e-13)
    # a mirror g = s R with s = -1, R = -g proper: (p if s == -1 else 1) * D_l(R), per block
    mirror = _reflection([0.3, -1.0, 0.5])
    assert np.linalg.det(mirror) < 0
    mats = rep.matrix(tf.constant(mirror)).numpy()
    for sl, (mul, ir) in zip(irreps.slices(), irreps):
        d = wigner_D(ir.l, tf.constant(-mirror)).numpy()
        np.testing.assert_allclose(mats[sl, sl], ir.p * np.kron(np.eye(mul), d), atol=1e-10)
    # 1o transforms as a vector, 1e as a pseudovector (cross product of vectors)
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=3), rng.normal(size=3)
    vec = IrrepsRep("1o").transform(tf.constant(mirror), tf.constant(u[None])).numpy()[0]
    np.testing.assert_allclose(vec, mirror @ u, atol=1e-13)
    pseudo = IrrepsRep("1e").transform(tf.constant(mirror), tf.constant(np.cross(u, v)[None]))
    np.testing.assert_allclose(pseudo.numpy()[0], np.cross(mirror @ u, mirror @ v), atol=1e-12)
    # batched mix of proper and improper elements; homomorphism across the two components
    rots = random_rotations(2, seed=11, dtype=tf.float64).numpy()
    mixed = np.stack([rots[0], -rots[1]])
    got = rep.transform(tf.constant(mixed), x).numpy()
    for b in range(2):
        np.testing.assert_allclose(got[b], x.numpy()[b] @ rep.matrix(mixed[b]).numpy().T, atol=1e-12)
    np.testing.assert_allclose(
        rep.matrix(mirror @ rots[0]).numpy(), rep.matrix(mirror).numpy() @ rep.matrix(rots[0]).numpy(), atol=1e-10
    )
    # Irrep/Irreps convenience
    np.testing.assert_allclose(Irrep("2o").D_from_matrix(-np.eye(3)).numpy(), -np.eye(5), atol=1e-13)
    np.testing.assert_allclose(irreps.D_from_matrix(mirror).numpy(), mats, atol=1e-13)


def test_irreps_rep_rejects_bad_rotation_rank():
    with pytest.raises(ValueError):
        IrrepsRep("1o").transform(tf.zeros([2, 2, 3, 3]), tf.zeros([2, 3]))
