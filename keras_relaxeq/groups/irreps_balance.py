"""SEGNN hidden irreps: weight counts of fully connected tensor products and balanced irreps."""

from __future__ import annotations

from keras_relaxeq.groups.irreps import Irrep, Irreps


def fully_connected_tp_num_weights(irreps_in1, irreps_in2, irreps_out) -> int:
    """Number of weights of a fully connected tensor product ``in1 (x) in2 -> out``.

    One ``mul1 x mul2 x mul_out`` weight block per path ``(ir1, ir2, ir_out)`` with
    ``ir_out`` in ``ir1 * ir2`` (triangle rule and ``p_out = p1 p2``): the
    ``weight_numel`` of ``e3nn.o3.FullyConnectedTensorProduct`` (``"uvw"`` paths).
    """
    in1, in2, out = Irreps(irreps_in1), Irreps(irreps_in2), Irreps(irreps_out)
    total = 0
    for mul1, ir1 in in1:
        for mul2, ir2 in in2:
            products = list(ir1 * ir2)
            for mul3, ir3 in out:
                if ir3 in products:
                    total += mul1 * mul2 * mul3
    return total


def dimension_balanced_irreps(lmax: int, vec_dim: int, sh_type: bool = True) -> Irreps:
    """Split a feature budget of ``vec_dim`` dimensions evenly over degrees ``0 .. lmax``.

    Mirrors ``BalancedIrreps(lmax, vec_dim, sh_type)`` of the SEGNN reference code
    (Brandstetter et al., ICLR 2022; github.com/RobDHess/Steerable-E3-GNN,
    ``models/balanced_irreps.py``): each irrep type gets ``int(vec_dim / (2l+1) / n_types)``
    copies and the remainder goes to the scalars, so the total dimension is ``vec_dim``.
    With ``sh_type`` the types are those of the spherical harmonics (``(l, (-1)^l)``),
    otherwise ``0e`` plus both parities of every ``l >= 1``.
    Example: ``dimension_balanced_irreps(1, 64) == Irreps("34x0e+10x1o")``.
    """
    types = [Irrep(0, 1)]
    for l in range(1, int(lmax) + 1):
        types += [Irrep(l, (-1) ** l)] if sh_type else [Irrep(l, 1), Irrep(l, -1)]
    copies = [int(vec_dim / ir.dim / len(types)) for ir in types]
    copies[0] += vec_dim - sum(n * ir.dim for n, ir in zip(copies, types))
    return Irreps(list(zip(copies, types)))


def weight_balanced_irreps(scalar_irreps, attr_irreps, sh: bool = True, lmax: int | None = None) -> Irreps:
    """Hidden irreps up to ``lmax`` whose tensor product has as many weights as a scalar layer.

    Mirrors ``WeightBalancedIrreps(irreps_in1_scalar, irreps_in2, sh, lmax)`` of the SEGNN
    reference code (github.com/RobDHess/Steerable-E3-GNN, ``models/balanced_irreps.py``):
    the smallest ``n`` such that the fully connected tensor product
    ``hidden (x) attr_irreps -> hidden`` has at least as many weights as
    ``scalar_irreps (x) 1x0e -> scalar_irreps``, where ``hidden`` is
    ``n`` copies of each spherical-harmonic irrep up to ``lmax`` (sorted, simplified) if
    ``sh``, else ``dimension_balanced_irreps(lmax, n)``.  ``lmax`` defaults to
    ``attr_irreps.lmax``.
    """
    scalar_irreps, attr_irreps = Irreps(scalar_irreps), Irreps(attr_irreps)
    if lmax is None:
        lmax = attr_irreps.lmax

    def hidden(n):
        if sh:
            return (Irreps.spherical_harmonics(lmax) * n).sort().irreps.simplify()
        return dimension_balanced_irreps(lmax, n)

    target = fully_connected_tp_num_weights(scalar_irreps, "1x0e", scalar_irreps)
    n = 1
    irreps = hidden(n)
    while fully_connected_tp_num_weights(irreps, attr_irreps, irreps) < target:
        n += 1
        irreps = hidden(n)
    return irreps


def balanced_irreps(
    num_scalars: int = 64, lmax: int = 1, balance: str = "weights", attr_irreps=None, sh_type: bool = True
) -> Irreps:
    """Hidden irreps of a SEGNN with the budget of ``num_scalars`` scalar channels.

    ``balance="weights"`` (the SEGNN default ``--subspace_type=weightbalanced``, used
    for the charged N-body runs with ``--hidden_features=64 --lmax_h=1 --lmax_attr=1``):
    :func:`weight_balanced_irreps` with ``attr_irreps`` (default
    ``Irreps.spherical_harmonics(lmax)``), giving ``32x0e+32x1o`` for 64 scalars and
    ``lmax = 1``.  ``balance="dimension"`` (``--subspace_type=balanced``):
    :func:`dimension_balanced_irreps`, total dimension ``num_scalars`` (``34x0e+10x1o``).
    """
    if balance in ("weights", "weight", "weightbalanced"):
        if attr_irreps is None:
            attr_irreps = Irreps.spherical_harmonics(lmax)
        return weight_balanced_irreps(Irreps([(int(num_scalars), "0e")]), attr_irreps, sh=sh_type, lmax=lmax)
    if balance in ("dimension", "dim", "balanced"):
        return dimension_balanced_irreps(lmax, int(num_scalars), sh_type=sh_type)
    raise ValueError(f"balance must be 'weights' or 'dimension', got {balance!r}.")


__all__ = ["balanced_irreps", "dimension_balanced_irreps", "fully_connected_tp_num_weights", "weight_balanced_irreps"]
