"""Normalisation on fixed-point secret tensors: 1/sqrt, LayerNorm and GroupNorm.

Every function takes `SecretTensor`s of fixed-point values with `frac_bits` f (round(x * 2^f)
in Z_2^64, `mpc.fixedpoint`) and returns one at the same scale, built only from the
`SecretTensor` primitives (one batched `ltz`, fused products with truncation, public
constants). No affine weight or bias is applied: the caller multiplies by its own gamma and
adds beta.

`rsqrt(v)` is 1/sqrt(clamp(v, low, high)) for powers of two low < high (default 2^-10 and
2^10): it saturates outside [low, high] (v <= 0 included) at 1/sqrt(low) and 1/sqrt(high),
with no extra round (the clamp rides on the comparisons that find v's range), so whatever v
is the result is bounded. The secure evaluation, for the busiest party of `replicated`:

1. range reduction: one batched comparison of v against every threshold 2^k and
   2^k * 45/32 in [low, high] (41 comparisons a value by default): b_j = [v < T_j]       (8)
2. one fused product and truncation: m = v / T_i for the interval [T_i, T_(i+1)) holding v
   (m in [1, 45/32) or [1, 64/45)) and the first guess y = alpha_i + beta_i m, the minimax
   line for 1/sqrt(m) on the interval (relative error 5.8e-3): both are v times a public
   combination of the bits (linear in the bits, no communication). Outside [low, high]
   m = y = 1 exactly: Newton's fixed point                                                 (2)
3. n Newton steps y <- y (3 - m y^2) / 2, each two fused rounds: [y*y, m*y], then
   (3 y - (m y) y^2) / 2 with the 3 y as the bias of the truncation                      (4 n)
4. the result is C_i y with C_i = 1/sqrt(T_i) (public, linear in the bits)             (2)

so 12 + 4 n rounds: 16 at n = 1 (the default for f < 20), 20 at n = 2 (f >= 20). Every
quantity of steps 2-3 lies in [0.8, 1.5] and carries 28 fractional bits whatever f is, so
the Newton iteration never sees the 2^20 dynamic range of v; every value stays below 2^61
before its truncation (about 2^60 at most; y never overshoots 1/sqrt(m) by more than 0.6 %).

Bounds for v in [low, high] (relative, against 1/sqrt at the encoded v, whatever the scheme's
truncation does within its promise; `rsqrt_error_bound`):

    APPROXIMATION_ERROR[n] + 2^-22 + 2^-f sqrt(high) / (1 - APPROXIMATION_ERROR[n])

(the float iteration on the fitted lines: 5.1e-5 after one Newton step, 3.9e-9 after two;
the fixed point of steps 2-4; one unit of the output at the top of the range), i.e. at most
5.4e-4 at f = 16 (one step) and 2.2e-6 at f = 24 (two steps). Equivalently
|out - 1/sqrt(v)| <= (APPROXIMATION_ERROR[n] + 2^-22) / sqrt(v) + 2^-f.

`layer_norm(x, f, axes, eps)` is (x - mean) / sqrt(var + eps) over `axes` of each example
(the batch axis 0 is never normalised), N = the number of values normalised together:

1. the mean's estimate m0 = (sum x) * round(2^31 / N) / 2^31: one truncation              (2)
2. d = x - m0 and the residue R = sum x - N m0 (exact, local: R / N = mean - m0);
   Q = sum_i trunc(d_i^2) at ub = min(2 f - 1, 47 - log2(N high 45/64), 2 f + 3 -
   log2 N) fractional bits (31 at f = 16, 33 at f = 24 for N = 16): one fused
   product-truncation; u = Q + N eps. Q / N is var + (mean - m0)^2                         (2)
3. rsqrt's steps 1-3 on u with every threshold multiplied by N (the division by N is folded
   into the public constants of the range reduction), and in the same fused round as its
   step 2 the products d * C_i and R * C_i / N (P = (d - R / N) C_i = (x - mean) C_i; the
   mean's own rounding error cancels exactly)                                     (8 + 2 + 4 n)
4. the output P * y                                                                        (2)

so 16 + 4 n rounds: 20 at f < 20, 24 at f >= 20; 41 comparisons per normalised group (not
per value). `group_norm` reshapes (B, C, H, W) or (B, C, L) to (B, groups, C / groups * H * W)
and costs the same.

Ranges (for f up to 24 every product then stays below 2^61): every |x| < 2^(29 - f)
(8192 at f = 16, 32 at f = 24); N <= 2^12. The variance is assumed in [low - eps, high - eps]:
var + eps is clamped to [low, high] (a constant row gives 0, since x - mean = 0, whatever
eps is; a row of var + eps < low is multiplied by 1/sqrt(low) = 32 rather than divided by
its standard deviation, a row of var + eps > high by 1/sqrt(high) = 1/32: both bounded).

Bound (absolute, on the normalised output; `layer_norm_error_bound`): with e = 2^-f,
delta = e (1 + N x_max 2^(f - 32)) the estimate's error (only its square reaches var),
dv = 2^-ub + delta^2 + 2^-(ub + 1) / N the variance's error:

    max(sqrt(N - 1) r, 2 x_max / sqrt(high) 2^-24) + 2^(1 - Pb) + e,
    r = (1 + A_n + 2^-24) / sqrt(1 - dv / low) - 1,
    A_n = APPROXIMATION_ERROR[n] + SHIFT_SLOPE[n] 2^-13

(rows computed in [low, high], or whose exact var + eps is below high, have |z| <= sqrt(N -
1); rows clamped at high have m = y = 1 exactly and only the fixed point's 2^-24;
the scale factors sigma_i = 1 / (N T_i) keep 12 significant bits, so m may leave its
interval by 2^-13 relative), Pb = floor(29 - log2(max(1.2 sqrt(N) + 0.1, 2^(30 - f) /
sqrt(high)))) the fractional bits of P. For N = 16 and |x| <= 31 that is 2.2e-4 at f = 16
(dominated by 3.9 * 5.1e-5, the approximation) and 5.8e-7 at f = 24 (var + eps near low:
the variance's 2^-33 relative to 2^-10, and 2^-24 of fixed point, times sqrt(15)). delta
grows with N |x|: at f = 16, N = 1024 and |x| near 2^13, delta^2 = 4e-6 is 0.4 % of low and
the bound 0.066 (0.0022 for |x| <= 10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from protocols.ops import Mul
from protocols.tensor import SecretTensor

__all__ = ["APPROXIMATION_ERROR", "DEFAULT_HIGH", "DEFAULT_LOW", "SPLIT", "group_norm",
           "layer_norm", "layer_norm_error_bound", "layer_norm_rounds", "newton_steps",
           "rsqrt", "rsqrt_approximation", "rsqrt_error_bound", "rsqrt_rounds"]

#: The default range of rsqrt's argument (and of var + eps in the normalisations).
DEFAULT_LOW = 2.0**-10
DEFAULT_HIGH = 2.0**10
#: Each octave [2^k, 2^(k+1)) is split at 2^k * SPLIT (a dyadic near sqrt(2), exact at
#: f >= 15 for the default low): two kinds of interval, of ratios 45/32 and 64/45.
SPLIT = 45 / 32
_RATIOS = (SPLIT, 2 / SPLIT)
#: Numbers of Newton steps (after the linear first guess) that are supported.
STEPS = (1, 2)

#: Stated bounds on the relative error of the float iteration (`rsqrt_approximation`) over
#: [low, high], by number of Newton steps: the equioscillation error of the fitted lines
#: after the steps (measured: 5.05e-5 and 3.82e-9; the line alone is 5.8e-3).
APPROXIMATION_ERROR = {1: 5.1e-5, 2: 3.9e-9}

#: How fast the approximation error grows when m leaves its interval by a relative rho (the
#: scale factors' rounding): at most SHIFT_SLOPE[n] * rho beyond APPROXIMATION_ERROR[n]
#: (measured slopes: 2.5e-3 after one step, 3.8e-7 after two).
SHIFT_SLOPE = {1: 3e-3, 2: 1e-6}

#: Fractional bits of m and y (both in [0.8, 1.5]) during the iteration.
WORK_BITS = 28
#: Fractional bits of u times those of the scale factors: m 2^59 < 2^59.6.
_SCALED_BITS = 59
#: Significant bits the smallest scale factor keeps (its rounding moves m by < 2^-13, which
#: moves the approximation error by < 4e-7 after one step, < 1e-10 after two).
_SIGMA_BITS = 12
#: The first Newton round's truncation: y^2 and m y at 2 * 28 - 27 = 29 bits.
_SQUARE_TRUNC = 2 * WORK_BITS - 29
#: The mean's reciprocal of N is round(2^31 / N) / 2^31.
_MEAN_BITS = 31
#: Fixed-point allowance of the iteration (m's truncation, the rounded coefficients, the
#: Newton rounds, the scale factors' rounding, C's encoding), relative: measured < 2^-26.
_ITERATION_ERROR = 2.0**-24
_STANDALONE_ERROR = 2.0**-22  # the same plus C at 27 bits (relative 2^-23 at C = 2^-5)


# -- the first guess: a line per kind of interval, fitted for the error after the steps ------
def _newton_t(t: np.ndarray | float, steps: int) -> np.ndarray | float:
    """t = y sqrt(m) after `steps` Newton steps: t <- t (3 - t^2) / 2."""
    for _ in range(steps):
        t = t * (3.0 - t * t) / 2.0
    return t


def _fit(ratio: float, steps: int) -> tuple[float, float]:
    """(alpha, beta) minimising max over m in [1, ratio] of |1 - t_steps| for the first guess
    y = alpha + beta m (t = y sqrt(m)): t(1) = t(ratio) below 1 and the interior maximum
    above it give equal errors after the steps (bisection on the scale of the line)."""
    root = math.sqrt(ratio)
    c = (root - 1.0) / (1.0 - ratio * root)  # beta / alpha, from t(1) = t(ratio)
    top = -1.0 / (3.0 * c)  # where (1 + c m) sqrt(m) is largest
    end, middle = 1.0 + c, (1.0 + c * top) * math.sqrt(top)
    lo, hi = 1.0 / middle, 1.0 / end
    for _ in range(200):
        a = (lo + hi) / 2
        if 1.0 - _newton_t(a * end, steps) > 1.0 - _newton_t(a * middle, steps):
            lo = a
        else:
            hi = a
    a = (lo + hi) / 2
    return a, a * c


#: (alpha, beta) for the two kinds of interval, by number of steps.
LINES = {steps: tuple(_fit(r, steps) for r in _RATIOS) for steps in STEPS}


def _check_frac_bits(frac_bits: int) -> None:
    if not isinstance(frac_bits, int | np.integer) or isinstance(frac_bits, bool) \
            or frac_bits < 1:
        raise ValueError(f"frac_bits must be a positive int, got {frac_bits!r}")


def _exponents(low: float, high: float) -> tuple[int, int]:
    """log2(low), log2(high): both must be powers of two, low < high."""
    out = []
    for name, value in (("low", low), ("high", high)):
        value = float(value)
        if not math.isfinite(value) or value <= 0 or math.frexp(value)[0] != 0.5:
            raise ValueError(f"{name} must be a positive power of two, got {value!r}")
        out.append(int(math.log2(value)))
    if out[0] >= out[1]:
        raise ValueError(f"low {low!r} must be below high {high!r}")
    return out[0], out[1]


def newton_steps(frac_bits: int, steps: int | None = None) -> int:
    """The number of Newton steps: `steps` if given, else the fewest whose approximation
    error is at most one unit of the output at the top of the default range, 2^(5 - f):
    1 for f < 20, 2 from f = 20 on."""
    if steps is not None:
        if steps not in STEPS:
            raise ValueError(f"steps must be one of {STEPS}, got {steps!r}")
        return int(steps)
    _check_frac_bits(frac_bits)
    unit = 2.0**-frac_bits * math.sqrt(DEFAULT_HIGH)
    return next((n for n in STEPS if APPROXIMATION_ERROR[n] <= unit), STEPS[-1])


def _thresholds(lo: int, hi: int) -> list[float]:
    """2^k and 2^k * SPLIT for k in [lo, hi), then 2^hi: the lower ends of the intervals."""
    out = []
    for k in range(lo, hi):
        out += [2.0**k, 2.0**k * SPLIT]
    return out + [2.0**hi]


def rsqrt_approximation(v: np.ndarray, steps: int = 1, low: float = DEFAULT_LOW,
                        high: float = DEFAULT_HIGH) -> np.ndarray:
    """The float64 iteration the secure evaluation computes up to its fixed-point error:
    1/sqrt(clamp(v, low, high)) by the fitted line on v's interval and `steps` Newton steps."""
    steps = newton_steps(1, steps)
    lo, hi = _exponents(low, high)
    ends = np.asarray(_thresholds(lo, hi))
    v = np.asarray(v, dtype=np.float64)
    clipped = np.clip(v, low, high)
    index = np.clip(np.searchsorted(ends, clipped, side="right") - 1, 0, len(ends) - 2)
    start = ends[index]
    kind = index % 2
    lines = np.asarray(LINES[steps])
    m = clipped / start
    y = lines[kind, 0] + lines[kind, 1] * m
    for _ in range(steps):
        y = y * (3.0 - m * y * y) / 2.0
    out = y / np.sqrt(start)
    return np.where(v < low, 1.0 / math.sqrt(low), np.where(v >= high, 1.0 / math.sqrt(high),
                                                            out))


def rsqrt_error_bound(frac_bits: int, low: float = DEFAULT_LOW, high: float = DEFAULT_HIGH,
                      steps: int | None = None) -> float:
    """The stated relative error of `rsqrt` for v in [low, high] (saturated outside):
    approximation, fixed point of the iteration, and one unit of the output at its smallest
    value (1 - A) / sqrt(high)."""
    n = newton_steps(frac_bits, steps)
    _exponents(low, high)
    approx = APPROXIMATION_ERROR[n]
    return approx + _STANDALONE_ERROR + 2.0**-frac_bits * math.sqrt(high) / (1.0 - approx)


# -- the secure range reduction ---------------------------------------------------------------
@dataclass(frozen=True)
class _Reduction:
    """The public constants of the range reduction of u (fractional bits `value_bits`), whose
    target is v = u / n_div, onto m = v / T_i: encoded thresholds, and for every interval the
    scale factor sigma_i = 2^K / (n_div T_i), beta_i sigma_i, alpha_i (W bits) and C_i^2 =
    n_div sigma_i / 2^K (so that C_i / sqrt(m) = 1 / sqrt(v) exactly, whatever the rounding
    of sigma_i)."""

    value_bits: int
    n_div: int
    thresholds: tuple[int, ...]  # round(n_div T_j 2^value_bits), j = 0..J
    sigma: tuple[int, ...]
    beta_sigma: tuple[int, ...]
    alpha: tuple[int, ...]
    c_squared: tuple[float, ...]
    low: float
    high: float

    @property
    def shift(self) -> int:
        """The truncation of the scaling round: u sigma at value_bits + K -> m at W bits."""
        return _SCALED_BITS - WORK_BITS


@lru_cache(maxsize=64)
def _reduction(value_bits: int, n_div: int, low: float, high: float,
               steps: int) -> _Reduction:
    lo, hi = _exponents(low, high)
    if value_bits + lo < 5:
        raise ValueError(f"{value_bits} fractional bits cannot hold the thresholds from low "
                         f"= 2^{lo} exactly (need {5 - lo})")
    ends = _thresholds(lo, hi)
    k_bits = _SCALED_BITS - value_bits
    smallest = 2.0**k_bits / (n_div * ends[-2])
    if smallest < 2.0**_SIGMA_BITS:
        raise ValueError(f"the range reduction cannot scale v up to high = 2^{hi} over "
                         f"{n_div} values at {value_bits} fractional bits")
    largest = 2.0**k_bits / (n_div * ends[0]) * max(1.0, abs(LINES[steps][0][1]))
    if largest >= 2.0**62:
        raise ValueError(f"low = 2^{lo} is too small at {value_bits} fractional bits")
    thresholds = tuple(int(round(n_div * t * 2.0**value_bits)) for t in ends)
    sigma, beta_sigma, alpha, c_squared = [], [], [], []
    for i, start in enumerate(ends[:-1]):
        a, b = LINES[steps][i % 2]
        s = int(round(2.0**k_bits / (n_div * start)))
        sigma.append(s)
        beta_sigma.append(int(round(b * s)))
        alpha.append(int(round(a * 2.0**WORK_BITS)))
        c_squared.append(n_div * s / 2.0**k_bits)
    return _Reduction(value_bits, n_div, thresholds, tuple(sigma), tuple(beta_sigma),
                      tuple(alpha), tuple(c_squared), float(low), float(high))


def _stack(tensors: list[SecretTensor]) -> SecretTensor:
    """The tensors (all of one shape) along a new leading axis."""
    return SecretTensor.concatenate([t.reshape(1, *t.shape) for t in tensors], axis=0)


def _select(bits: SecretTensor, inside: list[int], below: int, above: int) -> SecretTensor:
    """sum_i inside[i] [T_i <= u < T_(i+1)] + below [u < T_0] + above [u >= T_J], from the
    bits b_j = [u < T_j] (shape (J + 1, n)): linear in the bits, no communication. The
    interval indicators telescope: the coefficient of b_j is c_(j-1) - c_j."""
    padded = [below, *inside, above]
    coef = np.array([padded[j] - padded[j + 1] for j in range(len(padded) - 1)],
                    dtype=np.int64)
    full = np.broadcast_to(coef.reshape(-1, *(1,) * (bits.ndim - 1)), bits.shape)
    return (bits * np.ascontiguousarray(full)).sum(axis=0) + int(above)


def _broadcast(t: SecretTensor, width: int) -> SecretTensor:
    """(rows,) -> (rows, width), every row repeated."""
    return t.reshape(t.shape[0], 1)[:, np.zeros(width, dtype=np.intp)]


def _newton(m: SecretTensor, y: SecretTensor, steps: int) -> SecretTensor:
    """`steps` Newton steps y <- (3 y - (m y) y^2) / 2 at W bits (two fused rounds each)."""
    for _ in range(steps):
        first = _stack([y, m]).bilinear_trunc(_stack([y, y]), Mul(), None, _SQUARE_TRUNC)
        square, my = first[0], first[1]
        inner = 2 * (2 * WORK_BITS - _SQUARE_TRUNC)  # fractional bits of (m y) y^2
        bias = y * (3 << (inner - WORK_BITS))
        y = (-my).bilinear_trunc(square, Mul(), bias, inner - WORK_BITS + 1)
    return y


def _compare(u: SecretTensor, red: _Reduction) -> SecretTensor:
    """Step 1 for flat u: b_j = [u < T_j] for every threshold, one batched comparison."""
    return _stack([u - t for t in red.thresholds]).ltz()


def _scale(u: SecretTensor, bits: SecretTensor, red: _Reduction,
           extra_left: list[SecretTensor], extra_right: list[SecretTensor]
           ) -> tuple[SecretTensor, SecretTensor, list[SecretTensor]]:
    """Step 2 for flat u: one fused round of u sigma (m), u beta sigma (the first guess) and
    the extra flat products (same truncation). Returns (m, y, extras), m and y at W bits."""
    n = u.shape[0]
    one = 1 << WORK_BITS
    sigma = _select(bits, list(red.sigma), 0, 0)
    beta_sigma = _select(bits, list(red.beta_sigma), 0, 0)
    left = SecretTensor.concatenate([u, u, *extra_left], axis=0)
    right = SecretTensor.concatenate([sigma, beta_sigma, *extra_right], axis=0)
    out = left.bilinear_trunc(right, Mul(), None, red.shift)
    m = out[0:n] + _select(bits, [0] * len(red.sigma), one, one)
    y = out[n:2 * n] + _select(bits, list(red.alpha), one, one)
    extras, offset = [], 2 * n
    for t in extra_left:
        extras.append(out[offset:offset + t.shape[0]])
        offset += t.shape[0]
    return m, y, extras


def _c_values(red: _Reduction, frac: int, divide: int = 1) -> tuple[list[int], int, int]:
    """C_i / divide at `frac` bits for every interval, and for below / above."""
    scale = 2.0**frac / divide
    inside = [int(round(math.sqrt(c2) * scale)) for c2 in red.c_squared]
    return inside, int(round(scale / math.sqrt(red.low))), int(round(scale / math.sqrt(red.high)))


def rsqrt(v: SecretTensor, frac_bits: int, low: float = DEFAULT_LOW,
          high: float = DEFAULT_HIGH, steps: int | None = None) -> SecretTensor:
    """1 / sqrt(clamp(v, low, high)) for powers of two low < high (module docstring).

    Relative error <= 5.4e-4 at f = 16 and <= 2.2e-6 at f = 24 for v in [low, high]
    (`rsqrt_error_bound`), saturated outside; 16 rounds under `replicated` at f < 20 (one
    Newton step), 20 from f = 20 on (two), 41 comparisons a value (default range)."""
    _check_frac_bits(frac_bits)
    n = newton_steps(frac_bits, steps)
    red = _reduction(int(frac_bits), 1, float(low), float(high), n)
    flat = v.reshape(-1)
    bits = _compare(flat, red)
    m, y, _ = _scale(flat, bits, red, [], [])
    y = _newton(m, y, n)
    c_bits = 60 - WORK_BITS - math.ceil(0.5 * math.log2(1.0 / red.low))
    c = _select(bits, *_c_values(red, c_bits))
    out = y.bilinear_trunc(c, Mul(), None, WORK_BITS + c_bits - frac_bits)
    return out.reshape(*v.shape)


def rsqrt_rounds(frac_bits: int, steps: int | None = None) -> int:
    """rsqrt's online rounds under `replicated`: 8 + 2 + 4 n + 2."""
    return 12 + 4 * newton_steps(frac_bits, steps)


# -- normalisation -----------------------------------------------------------------------------
def _variance_bits(frac_bits: int, n: int, high: float) -> int:
    """Fractional bits ub of the sum of squares: at most 2f - 1 (one truncation); such that
    the scale factors keep `_SIGMA_BITS` (ub <= 59 - 12 - log2(N high 45/64)); and such that
    u <= N 2^(58 - 2f) 2^ub stays below 2^62."""
    lanes = math.ceil(math.log2(n)) if n > 1 else 0
    scaled = math.floor(_SCALED_BITS - _SIGMA_BITS - math.log2(n * high * SPLIT / 2))
    return min(2 * frac_bits - 1, scaled, 2 * frac_bits + 3 - lanes)


def _p_bits(frac_bits: int, n: int, high: float) -> int:
    """Fractional bits of P = (x - mean) C_i: |P| <= max(1.2 sqrt(N) + 0.1, 2^(30-f) /
    sqrt(high)) and P 2^(Pb + 31) must stay below 2^60."""
    largest = max(1.2 * math.sqrt(n) + 0.1, 2.0**(30 - frac_bits) / math.sqrt(high))
    return int(math.floor(29 - math.log2(largest)))


def _normalised_axes(x: SecretTensor, axes: int | tuple[int, ...]) -> tuple[int, ...]:
    axes = (axes,) if isinstance(axes, int | np.integer) else tuple(axes)
    if not axes:
        raise ValueError("layer_norm needs at least one axis to normalise over")
    out = []
    for a in axes:
        if not isinstance(a, int | np.integer) or not -x.ndim <= a < x.ndim:
            raise ValueError(f"axis {a!r} does not exist in shape {x.shape}")
        a = int(a) % x.ndim
        if a == 0:
            raise ValueError("axis 0 is the batch: it is never normalised")
        out.append(a)
    if len(set(out)) != len(out):
        raise ValueError(f"repeated axes {axes}")
    return tuple(sorted(out))


def layer_norm(x: SecretTensor, frac_bits: int, axes: int | tuple[int, ...] = (1,),
               eps: float = 1e-5, low: float = DEFAULT_LOW, high: float = DEFAULT_HIGH,
               steps: int | None = None) -> SecretTensor:
    """(x - mean) / sqrt(clamp(var + eps, low, high)) over `axes` (module docstring), with no
    affine weight or bias. `axes` index x with the batch at 0 (e.g. (1,) for (B, N), (1, 2, 3)
    for (B, C, H, W)); mean and population variance as torch's LayerNorm.

    Error <= `layer_norm_error_bound` (2.2e-4 at f = 16, 5.8e-7 at f = 24 for N = 16 and
    |x| <= 31) for |x| < 2^(29 - f) and var + eps in [low, high]; 20 rounds under
    `replicated` at f < 20, 24 from f = 20 on."""
    _check_frac_bits(frac_bits)
    f = int(frac_bits)
    axes = _normalised_axes(x, axes)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be finite and non-negative, got {eps!r}")
    n_steps = newton_steps(f, steps)
    keep = [a for a in range(x.ndim) if a not in axes]
    order = keep + list(axes)
    moved = x.transpose(*order)
    n = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    if n > 1 << 12:
        raise ValueError(f"layer_norm over {n} values: at most 2^12 are supported")
    rows = int(np.prod([x.shape[a] for a in keep], dtype=np.int64))
    ub = _variance_bits(f, n, float(high))
    pb = _p_bits(f, n, high)
    red = _reduction(ub, n, float(low), float(high), n_steps)
    flat = moved.reshape(rows, n)
    # 1. the mean's estimate, and its residue R = sum x - N m0 = N (mean - m0), exact
    total = flat.sum(axis=1)
    m0 = (total * int(round(2.0**_MEAN_BITS / n))).trunc(_MEAN_BITS)
    residue = total - m0 * n
    d = flat - _broadcast(m0, n)
    # 2. the sum of squares at ub bits, plus N eps
    squares = d.bilinear_trunc(d, Mul(), None, 2 * f - ub)
    u = squares.sum(axis=1) + int(round(n * eps * 2.0**ub))
    # 3. range reduction with (x - mean) C_i in the same fused round
    p_frac = pb + red.shift - f  # C_i's fractional bits in that round
    bits = _compare(u, red)
    c = _select(bits, *_c_values(red, p_frac))
    k = _select(bits, *_c_values(red, p_frac, divide=n))
    m, y, (dc, rk) = _scale(u, bits, red, [d.reshape(-1), residue],
                            [_broadcast(c, n).reshape(-1), k])
    p = dc.reshape(rows, n) - _broadcast(rk, n)
    y = _newton(m, y, n_steps)
    # 4. the output
    z = p.bilinear_trunc(_broadcast(y, n), Mul(), None, pb + WORK_BITS - f)
    z = z.reshape(*moved.shape)
    inverse = [order.index(a) for a in range(x.ndim)]
    return z.transpose(*inverse)


def group_norm(x: SecretTensor, frac_bits: int, groups: int, eps: float = 1e-5,
               low: float = DEFAULT_LOW, high: float = DEFAULT_HIGH,
               steps: int | None = None) -> SecretTensor:
    """GroupNorm without affine parameters for (B, C, H, W) or (B, C, L) inputs: the C / groups
    channels of each group (and all positions) normalised together, like torch's GroupNorm.
    `layer_norm` over the last axis of (B, groups, C / groups * H * W): the same bounds (with
    N = C / groups * H * W) and rounds."""
    if x.ndim not in (3, 4):
        raise ValueError(f"group_norm takes (B, C, H, W) or (B, C, L) inputs, got {x.shape}")
    channels = x.shape[1]
    if not isinstance(groups, int | np.integer) or groups < 1 or channels % groups:
        raise ValueError(f"{groups!r} groups do not divide {channels} channels")
    batch = x.shape[0]
    grouped = x.reshape(batch, int(groups), -1)
    return layer_norm(grouped, frac_bits, (2,), eps, low, high, steps).reshape(*x.shape)


def layer_norm_rounds(frac_bits: int, steps: int | None = None) -> int:
    """layer_norm's (and group_norm's) online rounds under `replicated`: 2 + 2 + 8 + 2 + 4 n
    + 2."""
    return 16 + 4 * newton_steps(frac_bits, steps)


def layer_norm_error_bound(frac_bits: int, n: int, x_max: float | None = None,
                           low: float = DEFAULT_LOW, high: float = DEFAULT_HIGH,
                           steps: int | None = None) -> float:
    """The stated absolute error of `layer_norm` over N = `n` values, for |x| <= x_max (by
    default the whole range 2^(29 - f)) and any var + eps (clamped to [low, high])."""
    _check_frac_bits(frac_bits)
    _exponents(low, high)
    f = int(frac_bits)
    x_max = 2.0**(29 - f) if x_max is None else float(x_max)
    n_steps = newton_steps(f, steps)
    approx = APPROXIMATION_ERROR[n_steps] + SHIFT_SLOPE[n_steps] * 2.0**-(_SIGMA_BITS + 1)
    e = 2.0**-f
    ub = _variance_bits(f, n, float(high))
    pb = _p_bits(f, n, high)
    delta = e * (1.0 + n * x_max * 2.0**(f - _MEAN_BITS - 1))
    dv = 2.0**-ub + delta**2 + 2.0**-(ub + 1) / n
    if dv >= low:
        return math.inf
    relative = 1.0 + approx + _ITERATION_ERROR
    # rows computed inside [low, high] (or whose reference is): |z| <= sqrt(N - 1), var's
    # error relative to v >= low; rows computed and referenced at high: m = y = 1 exactly,
    # |z| <= 2 x_max / sqrt(high), only the iteration's fixed point
    inside = math.sqrt(max(n - 1, 0)) * ((1.0 / math.sqrt(1.0 - dv / low)) * relative - 1.0)
    above = 2.0 * x_max / math.sqrt(high) * _ITERATION_ERROR
    residue = n * delta * 2.0**-(pb + _SCALED_BITS - WORK_BITS - f + 1)
    return (max(inside, above)
            + 2.0 * 2.0**-pb + residue + e)
