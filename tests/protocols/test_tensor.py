"""SecretTensor (`protocols/tensor.py`) under every scheme: its linear and structural
operations, fixed-point arithmetic against floats, and 0-d values.

One body per property, parametrised over (scheme, n_parties) with `conftest.every_scheme`.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    EXAMPLES,
    assert_all_parties_agree,
    every_scheme,
    reveal_all,
    ring_arrays,
    run_secure,
    secret,
    small_dims,
)
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpc.fixedpoint import FixedPoint

# -- 0-d values -------------------------------------------------------------------------------

@pytest.mark.filterwarnings("error::RuntimeWarning")
@every_scheme
def test_zero_dimensional_values_wrap_without_warnings(scheme, n_parties):
    big = (1 << 64) - 5

    def program(p):
        x = secret(p, np.array(big, dtype=np.uint64), 0)
        return reveal_all(x * x + x)

    got = run_secure(scheme, n_parties, program)[0].result
    assert isinstance(got, np.ndarray) and got.shape == ()
    assert int(got) == (big * big + big) % (1 << 64)


# -- linear operations -----------------------------------------------------------------------

@every_scheme
@EXAMPLES
@given(data=st.data())
def test_linear_and_structural_operations_are_exact(scheme, n_parties, data):
    shape = (data.draw(small_dims, label="rows"), data.draw(small_dims, label="cols"))
    x, y, c = (data.draw(ring_arrays(shape), label=name) for name in "xyc")
    k = data.draw(st.integers(-(1 << 63), (1 << 63) - 1), label="public scalar")
    ku = np.uint64(k % (1 << 64))

    def program(p):
        sx, sy = secret(p, x, 0), secret(p, y, p.n_parties - 1)
        outs = [sx + sy, sx - sy, -sx, sx + c, c + sx, sx - c, c - sx, sx + k,
                sx * k, k * sx, sx * c, c * sx,
                sx.sum(), sx.sum(axis=0), sx.sum(axis=1, keepdims=True), sx.sum(axis=-1),
                sx.reshape(-1), sx.reshape(shape[1], shape[0]), sx.flatten(), sx.T,
                sx.transpose(1, 0), sx[0], sx[:, -1], sx[..., ::2], sx[::-1, :1],
                (sx - sy * 3 + 7).T[0]]
        return [reveal_all(o) for o in outs]

    with np.errstate(over="ignore"):
        want = [x + y, x - y, np.negative(x), x + c, c + x, x - c, c - x, x + ku,
                x * ku, ku * x, x * c, c * x,
                x.sum(dtype=np.uint64), x.sum(axis=0, dtype=np.uint64),
                x.sum(axis=1, keepdims=True, dtype=np.uint64), x.sum(axis=-1, dtype=np.uint64),
                x.reshape(-1), x.reshape(shape[1], shape[0]), x.reshape(-1), x.T, x.T, x[0],
                x[:, -1], x[..., ::2], x[::-1, :1], (x - y * np.uint64(3) + np.uint64(7)).T[0]]
    got = assert_all_parties_agree(run_secure(scheme, n_parties, program), len(want))
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.shape == np.shape(w), i
        assert np.array_equal(g, w), i


# -- fixed point against floats -------------------------------------------------------------

@every_scheme
@EXAMPLES
@given(data=st.data())
def test_fixed_point_arithmetic_within_its_error_bound(scheme, n_parties, data):
    fp = FixedPoint(frac_bits=16, int_bits=31)
    f, ulp = fp.frac_bits, 2.0 ** -fp.frac_bits
    reals = st.floats(-100, 100, allow_nan=False, allow_infinity=False)
    m, k, n = (data.draw(small_dims, label=d) for d in "mkn")
    xf = data.draw(hnp.arrays(np.float64, (m, k), elements=reals), label="x")
    yf = data.draw(hnp.arrays(np.float64, (m, k), elements=reals), label="y")
    wf = data.draw(hnp.arrays(np.float64, (k, n), elements=reals), label="w")
    cf = data.draw(reals, label="public constant")
    x, y, w = fp.encode(xf), fp.encode(yf), fp.encode(wf)
    c = fp.encode(np.array(cf))

    def program(p):
        sx, sy, sw = secret(p, x, 0), secret(p, y, 1), secret(p, w, p.n_parties - 1)
        outs = [sx + sy, sx - sy, sx + c, (sx * sy).trunc(f), (sx * c).trunc(f),
                (sx @ sw).trunc(f), ((sx * sy).trunc(f) @ sw).trunc(f)]
        return [reveal_all(o) for o in outs]

    got = [fp.decode(g) for g in
           assert_all_parties_agree(run_secure(scheme, n_parties, program), 7)]
    xe, ye, we, ce = fp.decode(x), fp.decode(y), fp.decode(w), float(fp.decode(c))
    # encoding: |x~ - x| <= ulp/2 each; truncation: floor or one more, so within 1 ulp
    enc = ulp / 2
    assert np.abs(got[0] - (xf + yf)).max() <= 2 * enc + 1e-9
    assert np.abs(got[1] - (xf - yf)).max() <= 2 * enc + 1e-9
    assert np.abs(got[2] - (xf + cf)).max() <= 2 * enc + 1e-9
    # a product of encoded values is exact before truncation: only the truncation errs
    assert np.abs(got[3] - xe * ye).max() <= ulp + 1e-9
    assert np.abs(got[3] - xf * yf).max() <= ulp + enc * (np.abs(xf) + np.abs(yf) + enc).max()
    assert np.abs(got[4] - xe * ce).max() <= ulp + 1e-9
    assert np.abs(got[5] - xe @ we).max() <= ulp + 1e-7
    bound = ulp * (1 + np.abs(we).sum(axis=0).max()) + ulp + 1e-7
    assert np.abs(got[6] - (xe * ye) @ we).max() <= bound
