"""A NumPy reference of the weighted O(3) tensor product, independent of the layer's fast path.

Shared by tests/layers/test_steerable.py and tests/layers/test_tensor_product_fast.py.
"""

import math

import numpy as np

from keras_relaxeq.groups import Irreps, clebsch_gordan_for_irreps


def reference_tp(in1, in2, out, kernel, bias, x, y, tp_rescale=True):
    """e3nn ``FullyConnectedTensorProduct`` (component normalisation) with SEGNN's rescaling, path by
    path in NumPy: ``coef * einsum('...ui,...vj,ijk,uvw->...wk')`` per path, kernel in e3nn path order."""
    in1, in2, out = Irreps(in1), Irreps(in2), Irreps(out)
    paths = [
        (i1, i2, io)
        for i1, (m1, a) in enumerate(in1)
        for i2, (m2, b) in enumerate(in2)
        for io, (mo, c) in enumerate(out)
        if m1 * m2 * mo and c in list(a * b)
    ]
    fan_in = {}
    for i1, i2, io in paths:
        fan_in[io] = fan_in.get(io, 0) + in1[i1].mul * in2[i2].mul
    lead = x.shape[:-1]
    blocks = [np.zeros(lead + (m, ir.dim)) for m, ir in out]
    off = 0
    for i1, i2, io in paths:
        (m1, r1), (m2, r2), (mo, ro) = in1[i1], in2[i2], out[io]
        w = kernel[off : off + m1 * m2 * mo].reshape(m1, m2, mo)
        off += m1 * m2 * mo
        coef = math.sqrt(ro.dim) if tp_rescale else math.sqrt(ro.dim / fan_in[io])
        xb = x[..., in1.slices()[i1]].reshape(lead + (m1, r1.dim))
        yb = y[..., in2.slices()[i2]].reshape(lead + (m2, r2.dim))
        blocks[io] += coef * np.einsum("...ui,...vj,ijk,uvw->...wk", xb, yb, clebsch_gordan_for_irreps(r1, r2, ro), w)
    assert off == len(kernel)
    result = np.concatenate([b.reshape(lead + (-1,)) for b in blocks], -1)
    if bias is not None:
        ib = 0
        for sl, (m, ir) in zip(out.slices(), out):
            if ir.is_scalar():
                result[..., sl] += bias[ib : ib + m]
                ib += m
    return result
