"""Activation functions on fixed-point secret tensors, built from the `SecretTensor` primitives.

Every function takes a `SecretTensor` x of fixed-point values with `frac_bits` f
(round(x * 2^f) in Z_2^64, `mpc.fixedpoint`) and returns one at the same scale. Error bounds
are absolute, against the exact function at the encoded input x, and hold for every x with
|x| < 2^15 (the model's range; at f = 16 the comparisons then stay far inside their promised
2^62), whatever the scheme's truncation does within its promise (floor or floor + 1).

Exact (up to the encoding of the public parameters):

* `leaky_relu` (and PReLU: one slope per channel): x + min(x, 0) * (slope - 1). One truncation
  and one ReLU, which is a single comparison: exact for x >= 0, within
  |x| 2^-(f+1) + 2^-(f-1) of slope * x for x < 0.
* `clamp` (Hardtanh, ReLU6: `hardtanh`, `relu6`): low + relu(x - low) - relu(x - high), both
  ReLUs in one batched call; exact.

Piecewise polynomials (`sigmoid`, `tanh`, `gelu`, `silu`): on [-R, R] the line is split at
a few breakpoints t_0 = -R < t_1 < ... < t_m = R, each piece carries a cubic fitted at import
(near-minimax: Lawson's reweighted least squares on Chebyshev nodes, in numpy, deterministic),
and outside [-R, R] the function is replaced by its asymptote (sigmoid 0 / 1, tanh -1 / 1,
gelu and silu 0 / x). The secure evaluation, for the busiest party of `replicated`:

1. one batched comparison of x against every breakpoint: bits b_i = [x < t_i]        (8)
2. one product round: u = clamp(x, -R, R) / S as x * [-R <= x < R] plus public multiples
   of the bits (S = 2^s >= R, so u's encoding is x's read with f + s fractional bits, and
   every power of u stays below 1: no overflow however large x is), and x * [x >= R] for
   the linear tails                                                               (1)
3. the coefficient of u^k of the piece x lies in is A_k = sum_j c_jk (b_{j+1} - b_j): linear
   in the bits, no communication, and zero outside [-R, R). Two fused product-and-truncation
   rounds: [u^2, A_1 u, A_3 u], then [A_2 u^2, (A_3 u) u^2]                            (2 + 2)

so 13 rounds under `replicated` (8 + 1 + 2 + 2; comparisons dominate), and 5 comparisons a
value. The stated bounds (`error_bound`) add the approximation error over the whole real
line (`APPROXIMATION_ERROR`, measured on a dense grid by the tests) and the fixed-point error
of the evaluation (`fixed_point_error`), which is about 2^-f * (6 + (|c_2| + |c_3|) / S).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from protocols.ops import Mul
from protocols.tensor import SecretTensor

__all__ = ["APPROXIMATIONS", "APPROXIMATION_ERROR", "PiecewisePolynomial", "clamp",
           "error_bound", "fixed_point_error", "gelu", "hardtanh", "leaky_relu", "relu6",
           "sigmoid", "silu", "tanh"]

#: Degree of every piece (cubic: its powers take two product levels, like a quadratic's).
DEGREE = 3
#: Values of the protocols must stay below this magnitude (truncation's promise, 2^62).
_HEADROOM = 1 << 62


# -- helpers ---------------------------------------------------------------------------------
def _stack(tensors: list[SecretTensor]) -> SecretTensor:
    """The tensors (all of one shape) along a new leading axis."""
    return SecretTensor.concatenate([t.reshape(1, *t.shape) for t in tensors], axis=0)


def _encode(value: float | np.ndarray, frac_bits: int) -> np.ndarray:
    """round(value * 2^f) as int64, refusing non-finite values and those that do not fit."""
    array = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"public parameter {value!r} is not finite")
    scaled = np.rint(array * float(1 << frac_bits))
    if np.any(np.abs(scaled) >= 2.0**61):
        raise ValueError(f"public parameter {value!r} does not fit at {frac_bits} fractional "
                         "bits")
    return scaled.astype(np.int64)


def _per_example(value: float | np.ndarray, x: SecretTensor, what: str,
                 axis: int | None = None) -> np.ndarray:
    """A public parameter broadcast to x's full shape: a scalar, an array broadcastable to
    the per-example shape x.shape[1:], or (with `axis`) a 1-D array along axis `axis` of x."""
    array = np.asarray(value, dtype=np.float64)
    if axis is not None and array.ndim > 0:
        if array.ndim != 1 or x.ndim == 0:
            raise ValueError(f"{what} along axis {axis} must be 1-D, got shape {array.shape}")
        axis = axis % x.ndim
        if axis == 0 or array.shape[0] != x.shape[axis]:
            raise ValueError(f"{what} of length {array.shape[0]} does not fit axis {axis} of "
                             f"shape {x.shape} (axis 0 is the batch)")
        array = array.reshape(array.shape[0], *(1,) * (x.ndim - 1 - axis))
    per_example = x.shape[1:]
    try:
        fits = np.broadcast_shapes(array.shape, per_example) == per_example
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"{what} of shape {array.shape} does not broadcast to the "
                         f"per-example shape {per_example} of x {x.shape}")
    return np.broadcast_to(array, x.shape)


def _check_frac_bits(frac_bits: int) -> None:
    if not isinstance(frac_bits, int | np.integer) or isinstance(frac_bits, bool) \
            or frac_bits < 0:
        raise ValueError(f"frac_bits must be a non-negative int, got {frac_bits!r}")


# -- exact activations -----------------------------------------------------------------------
def leaky_relu(x: SecretTensor, frac_bits: int, slope: float | np.ndarray = 0.01,
               axis: int | None = None) -> SecretTensor:
    """max(x, 0) + slope * min(x, 0); PReLU when `slope` is an array (one slope per channel).

    `slope` is a float or an array broadcastable to the per-example shape x.shape[1:] (e.g.
    (C, 1, 1) for (B, C, H, W) inputs), or a 1-D array along axis `axis` of x (axis=1: the
    channels of (B, C, ...) inputs, like torch's PReLU).

    With d = slope - 1 encoded at f and t = trunc(d * x) ~ d x (one truncation), the output
    is x + relu(t - 1) where d < 0 and x - relu(-t) where d >= 0: d * min(x, 0) is
    relu(d * x) or -relu(-d * x), and the offset keeps the truncation's floor + 1 from
    leaking into x >= 0. One truncation then one ReLU (10 rounds under `replicated`, one
    fewer than a comparison followed by a product).

    Error: exact for x >= 0; for x < 0 within |x| 2^-(f+1) + 2^-(f-1) of slope * x (the
    rounding of slope - 1 to 2^-f, and two units in the last place).
    """
    _check_frac_bits(frac_bits)
    d = _encode(_per_example(slope, x, "slope", axis) - 1.0, frac_bits)
    if np.any(np.abs(d) >= 1 << 30):
        raise ValueError(f"slope {slope!r} is too large for {frac_bits} fractional bits")
    negative = d < 0  # slope < 1: d * min(x, 0) = relu(t)
    sign = np.where(negative, 1, -1).astype(np.int64)
    offset = negative.astype(np.int64)
    t = (x * d).trunc(frac_bits)
    return x + (t * sign - offset).relu() * sign


def clamp(x: SecretTensor, frac_bits: int, low: float | np.ndarray | None = None,
          high: float | np.ndarray | None = None) -> SecretTensor:
    """min(max(x, low), high): Hardtanh, ReLU6 and clamp. Exact (in the ring, against low and
    high rounded to 2^-f).

    low + relu(x - low) - relu(x - high), both ReLUs in one batched call (one comparison
    depth: 8 rounds under `replicated`). `low` and `high` are floats or arrays broadcastable
    to the per-example shape x.shape[1:]; None leaves that side open.
    """
    _check_frac_bits(frac_bits)
    lo = None if low is None else _encode(_per_example(low, x, "low"), frac_bits)
    hi = None if high is None else _encode(_per_example(high, x, "high"), frac_bits)
    if lo is None and hi is None:
        return x
    if lo is not None and hi is not None:
        if np.any(lo > hi):
            raise ValueError(f"clamp with low {low!r} above high {high!r}")
        both = _stack([x - lo, x - hi]).relu()
        return both[0] - both[1] + lo
    if hi is None:
        return (x - lo).relu() + lo
    return x - (x - hi).relu()


def relu6(x: SecretTensor, frac_bits: int) -> SecretTensor:
    """min(max(x, 0), 6), exact: `clamp` to [0, 6]."""
    return clamp(x, frac_bits, 0.0, 6.0)


def hardtanh(x: SecretTensor, frac_bits: int, low: float = -1.0,
             high: float = 1.0) -> SecretTensor:
    """min(max(x, low), high), exact: `clamp` to [low, high] (default [-1, 1])."""
    return clamp(x, frac_bits, low, high)


# -- piecewise polynomials -------------------------------------------------------------------
def _fit_piece(function: Callable[[np.ndarray], np.ndarray], a: float, b: float,
               scale: float, degree: int = DEGREE, nodes: int = 512,
               iterations: int = 60) -> np.ndarray:
    """Coefficients (lowest first) in u = x / scale of a near-minimax polynomial of `degree`
    for `function` on [a, b]: Lawson's iteration (weighted least squares, the weights
    multiplied by the errors) in the Chebyshev basis on Chebyshev nodes."""
    t = np.cos(np.pi * (np.arange(nodes) + 0.5) / nodes)
    xs = (a + b) / 2 + (b - a) / 2 * t
    vander = np.polynomial.chebyshev.chebvander(t, degree)
    target = function(xs)
    weights = np.full(nodes, 1.0 / nodes)
    coef = np.zeros(degree + 1)
    for _ in range(iterations):
        root = np.sqrt(weights)
        coef = np.linalg.lstsq(vander * root[:, None], target * root, rcond=None)[0]
        weights = weights * np.abs(vander @ coef - target) + 1e-300
        weights /= weights.sum()
    in_t = np.polynomial.Polynomial(np.polynomial.chebyshev.cheb2poly(coef))
    in_u = in_t(np.polynomial.Polynomial([-(a + b) / (b - a), 2 * scale / (b - a)]))
    out = np.zeros(degree + 1)
    out[:len(in_u.coef)] = in_u.coef
    return out


@dataclass(frozen=True, eq=False)
class PiecewisePolynomial:
    """A function approximated by cubics on the pieces of [breakpoints[0], breakpoints[-1]]
    in u = x / 2^scale_bits, and by const + slope * x below and above that interval."""

    name: str
    function: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    breakpoints: tuple[float, ...]
    scale_bits: int  # S = 2^scale_bits >= R: u = x / S lies in [-1, 1]
    below: tuple[int, int]  # (const, slope) of the tail x < -R (small integers)
    above: tuple[int, int]  # (const, slope) of the tail x >= R
    coefficients: np.ndarray = field(init=False, repr=False)  # (pieces, DEGREE + 1), in u

    def __post_init__(self) -> None:
        bps = self.breakpoints
        if list(bps) != sorted(set(bps)) or len(bps) < 2:
            raise ValueError(f"{self.name}: breakpoints must increase, got {bps}")
        if max(abs(bps[0]), abs(bps[-1])) > 2**self.scale_bits:
            raise ValueError(f"{self.name}: the interval exceeds 2^{self.scale_bits}")
        scale = float(2**self.scale_bits)
        coef = np.stack([_fit_piece(self.function, a, b, scale)
                         for a, b in zip(bps[:-1], bps[1:], strict=True)])
        coef.setflags(write=False)
        object.__setattr__(self, "coefficients", coef)

    @property
    def pieces(self) -> int:
        return len(self.breakpoints) - 1

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The approximation in float64 (unrounded coefficients): what the secure evaluation
        computes up to its fixed-point error."""
        x = np.asarray(x, dtype=np.float64)
        bps = np.asarray(self.breakpoints)
        piece = np.clip(np.searchsorted(bps, x, side="right") - 1, 0, self.pieces - 1)
        u = np.clip(x, bps[0], bps[-1]) / 2.0**self.scale_bits
        coef = self.coefficients[piece]
        inside = sum(coef[..., k] * u**k for k in range(DEGREE + 1))
        return np.where(x < bps[0], self.below[0] + self.below[1] * x,
                        np.where(x >= bps[-1], self.above[0] + self.above[1] * x, inside))

    def encoded_coefficients(self, frac_bits: int) -> list[list[int]]:
        """Per piece, the coefficients of u^0..u^3 rounded to 2^-f (Python ints)."""
        return [[int(c) for c in row] for row in _encode(self.coefficients, frac_bits)]

    def fixed_point_error(self, frac_bits: int) -> float:
        """A bound on |secure - float approximation| inside [-R, R) (outside: exact).

        With e = 2^-f, h = 2^-(f+s) (the unit of u), |u| <= 1 and c_k the encoded
        coefficients of the piece: coefficient rounding (e/2 per term, 2e), A_1 u and A_3 u
        truncated (e each), u^2 within h, A_2 u^2 within |c_2| h + e, (A_3 u) u^2 within
        |c_3| h + e u^2 + e h + e: in all (6 + h) e + (|c_2| + |c_3|) h, maximised over the
        pieces."""
        e = 2.0**-frac_bits
        h = 2.0**-(frac_bits + self.scale_bits)
        coef = np.abs(np.asarray(self.encoded_coefficients(frac_bits), dtype=np.float64)) * e
        return float((6 + h) * e + (coef[:, 2] + coef[:, 3]).max() * h)

    def check_headroom(self, frac_bits: int) -> None:
        """Refuse a scale at which the products before truncation could reach 2^62: |u^2|,
        |A_k u| and |A_k u^2| are at most max(1, max |c|) * 2^(2f + s)."""
        coef = np.abs(self.coefficients).max()
        largest = max(2.0**self.scale_bits, coef + 1.0) * 2.0**(2 * frac_bits + self.scale_bits)
        if largest >= _HEADROOM:
            raise ValueError(f"{self.name} at {frac_bits} fractional bits: products reach "
                             f"2^{math.log2(largest):.1f}, beyond the 2^62 truncation promises")

    def evaluate(self, x: SecretTensor, frac_bits: int) -> SecretTensor:
        """The secure evaluation (module docstring): 1 comparison depth, 1 product round, 2
        fused product-and-truncation rounds."""
        _check_frac_bits(frac_bits)
        self.check_headroom(frac_bits)
        f, s = int(frac_bits), self.scale_bits
        ends = [int(v) for v in _encode(np.asarray(self.breakpoints), f)]
        bits = _stack([x - t for t in ends]).ltz()  # b_i = [x < t_i], one batched call
        below, last = bits[0], bits[self.pieces]
        above = 1 - last
        inside = last - below
        linear_tail = self.below[1] != 0 or self.above[1] != 0
        if linear_tail:
            products = _stack([x, x]) * _stack([inside, above])
            x_inside, x_above = products[0], products[1]
        else:
            x_inside, x_above = x * inside, None
        # u = clamp(x, -R, R) / S with f + s fractional bits: the encoding of clamp(x)
        u = x_inside + above * ends[-1] + below * ends[0]
        indicators = [bits[j + 1] - bits[j] for j in range(self.pieces)]
        coef = self.encoded_coefficients(f)
        a = []  # A_k: the coefficient of u^k of each value's piece (0 outside [-R, R))
        for k in range(DEGREE + 1):
            a_k = indicators[0] * coef[0][k]
            for j in range(1, self.pieces):
                a_k = a_k + indicators[j] * coef[j][k]
            a.append(a_k)
        first = _stack([u, a[1], a[3]]).bilinear_trunc(_stack([u, u, u]), Mul(), None, f + s)
        u2, t1, w3 = first[0], first[1], first[2]
        second = _stack([a[2], w3]).bilinear_trunc(_stack([u2, u2]), Mul(), None, f + s)
        out = a[0] + t1 + second[0] + second[1]
        one = 1 << f
        out = out + below * (self.below[0] * one) + above * (self.above[0] * one)
        if linear_tail:
            if self.below[1] != 0:
                out = out + (x - x_inside - x_above) * self.below[1]
            out = out + x_above * self.above[1]
        return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


_erf = np.frompyfunc(math.erf, 1, 1)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(np.asarray(x) / math.sqrt(2.0)).astype(np.float64))


#: The fitted approximations (breakpoints chosen for near-minimax error with 5 comparisons).
APPROXIMATIONS: dict[str, PiecewisePolynomial] = {p.name: p for p in (
    PiecewisePolynomial("sigmoid", _sigmoid, (-8.0, -2.75, 0.0, 2.75, 8.0), 3, (0, 0), (1, 0)),
    PiecewisePolynomial("tanh", np.tanh, (-4.0, -1.25, 0.0, 1.25, 4.0), 2, (-1, 0), (1, 0)),
    PiecewisePolynomial("gelu", _gelu, (-4.0, -1.5, 0.0, 1.5, 4.0), 2, (0, 0), (0, 1)),
    PiecewisePolynomial("silu", lambda x: x * _sigmoid(x), (-8.0, -2.5, 0.0, 2.5, 8.0), 3,
                        (0, 0), (0, 1)),
)}

#: Stated bounds on |approximation - function| over the whole real line, float64 (the
#: pieces, and the tails: 1 - sigmoid(8) = 3.4e-4, 1 - tanh(4) = 6.7e-4, x (1 - Phi(x)) at
#: 4 = 1.3e-4 for gelu, 8 sigmoid(-8) = 2.7e-3 for silu). Measured: 1.55e-3, 3.76e-3,
#: 5.6e-4, 2.68e-3.
APPROXIMATION_ERROR = {"sigmoid": 1.6e-3, "tanh": 3.8e-3, "gelu": 6e-4, "silu": 2.7e-3}


def fixed_point_error(name: str, frac_bits: int) -> float:
    """A bound on the secure evaluation's deviation from the float approximation."""
    return APPROXIMATIONS[name].fixed_point_error(frac_bits)


def error_bound(name: str, frac_bits: int) -> float:
    """The stated absolute error bound of `name` at `frac_bits`, over the whole real line
    (|x| < 2^15): approximation plus fixed-point error."""
    return APPROXIMATION_ERROR[name] + fixed_point_error(name, frac_bits)


def sigmoid(x: SecretTensor, frac_bits: int) -> SecretTensor:
    """1 / (1 + e^-x): cubics on [-8, -2.75, 0, 2.75, 8], 0 below -8, 1 from 8 on.

    Error <= 1.7e-3 at f = 16 (`error_bound`: 1.6e-3 approximation + fixed point). 13
    rounds under `replicated`, 5 comparisons a value."""
    return APPROXIMATIONS["sigmoid"].evaluate(x, frac_bits)


def tanh(x: SecretTensor, frac_bits: int) -> SecretTensor:
    """tanh(x): cubics on [-4, -1.25, 0, 1.25, 4], -1 below -4, 1 from 4 on.

    Error <= 3.95e-3 at f = 16 (`error_bound`: 3.8e-3 approximation + fixed point). 13
    rounds under `replicated`, 5 comparisons a value."""
    return APPROXIMATIONS["tanh"].evaluate(x, frac_bits)


def gelu(x: SecretTensor, frac_bits: int) -> SecretTensor:
    """x Phi(x) (the erf form): cubics on [-4, -1.5, 0, 1.5, 4], 0 below -4, x from 4 on.

    Error <= 8e-4 at f = 16 (`error_bound`: 6e-4 approximation + fixed point). 13 rounds
    under `replicated`, 5 comparisons a value."""
    return APPROXIMATIONS["gelu"].evaluate(x, frac_bits)


def silu(x: SecretTensor, frac_bits: int) -> SecretTensor:
    """x / (1 + e^-x) (swish): cubics on [-8, -2.5, 0, 2.5, 8], 0 below -8, x from 8 on.

    Error <= 2.9e-3 at f = 16 (`error_bound`: 2.7e-3 approximation + fixed point). 13 rounds
    under `replicated`, 5 comparisons a value."""
    return APPROXIMATIONS["silu"].evaluate(x, frac_bits)
