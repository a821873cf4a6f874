"""A two-party distributed comparison function (DCF), vectorised over a batch of keys.

Function secret sharing of the comparison f_{alpha,beta}(x) = beta if x < alpha else 0 for
n-bit unsigned inputs, with beta in a payload group of C components of Z_2^128: `gen` makes
two keys, `eval(b, key_b, x)` gives y_b with y_0 + y_1 = f(x) in the group, and either key
alone reveals nothing about alpha or beta. Boyle, Gilboa, Ishai, "Secure Computation with
Preprocessing via Function Secret Sharing" (TCC 2019); the construction is the DCF of Boyle,
Chandran, Gilboa, Gupta, Ishai, Kumar, Rathee, "Function Secret Sharing for Mixed-Mode and
Fixed-Point Secure Computation" (EUROCRYPT 2021), written here from its description.

Construction. Each party b walks the binary tree of the input, most significant bit first,
holding a 127-bit seed s and a control bit t (t_0 = 0, t_1 = 1 at the root; the roots are
the only per-party key parts). At each level the PRG G(s) gives for each side d in {L, R}
a seed, a control bit and a payload word v. The dealer, walking the path of alpha, publishes
one correction word per level (s_CW, V_CW, tL_CW, tR_CW), common to both keys; a party whose
t = 1 xors s_CW into its child seed and tX_CW into its child bit and adds V_CW to its
output. The words keep the invariant: on alpha's path t_0 xor t_1 = 1 and the seeds are
independent; off it the two parties hold the same (s, t), so everything they add later
cancels. When x leaves alpha's path at a level where alpha's bit is 1 (so x < alpha), V_CW
makes the two parties' accumulated sums differ by exactly beta; where alpha's bit is 0 by 0.
A last word CW_leaf zeroes the sum at the leaf x = alpha. Party 1 negates its sum, so the
outputs are additive shares: sum = beta * [x < alpha].

PRG. G is fixed-key AES-128 in the Matyas-Meyer-Oseas / correlation-robust-hash mode,
H_k(u) = AES_k(u) xor u, with public keys (one for the seed-and-bit block, one per payload
component, derived from labels by SHA-256). A seed s has its lowest bit cleared; the input
for side d is u = s | d, so the two sides are distinct inputs; the seed block's lowest bit
becomes the child's control bit and is then cleared. The leaf conversion of a seed is the
payload blocks at u = s. Every call is one bulk ECB encryption over all N seeds of a level
(the dealer's over the 4N children of both parties), one per key.

Speed and memory. The level loop is Python (n iterations); inside, after the bulk AES calls,
one numba kernel pass does the rest of the level (`_gen_level_kernel`, `_eval_level_kernel`;
their numpy twins `_gen_level_numpy`, `_eval_level_numpy` are checked bit for bit in
tests/protocols/test_dcf.py). The state carried between levels is O(N) words; nothing per level is
kept except the correction words themselves, which are the key.

Security, in brief. Party b's key is its own root seed plus the correction words. Each
correction word is masked by PRG outputs of the other party's seed on alpha's path (s_CW
by its lose-side seed, V_CW by its payload word, the bits by its control bits), and that
seed is never in b's key; modelling H as correlation robust (AES as a random permutation:
a seed has 127 unpredictable bits), the words are pseudorandom to b level by level, by the
hybrid argument of the EUROCRYPT 2021 paper, so a key is simulatable without alpha or beta.
Root seeds come from the caller's AES-CTR `PRG`, never from numpy or os.urandom here.

Layout. Payloads and outputs are limb-leading, as in `mpc.ring128`: (2C, N) uint64,
rows 2j and 2j + 1 the low and high limb of component j. Seeds are (N, 2) uint64 (low word
first, so the bytes are one AES block each). The correction words of a batch are one flat
uint64 array of `correction_words(N, n_bits, 2C)` words (`Corrections.from_flat` views it
without copying), so a dealer can send the same array to both parties.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numba
import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mpc import ring128 as r128
from mpc.prg import PRG

U64 = np.uint64
ONE = U64(1)
CLEAR_LSB = ~ONE
MAX_BITS = 64


def _fixed_key(label: str) -> bytes:
    return hashlib.sha256(b"sottovoce-dcf-fixed-aes-key/" + label.encode()).digest()[:16]


class FixedKeyHash:
    """H_k(u) = AES_k(u) xor u on (M, 2) uint64 blocks, for the seed key and one key per
    payload component. Public keys: this is a fixed function, not a secret."""

    def __init__(self, components: int) -> None:
        self.components = components
        labels = ["seed"] + [f"payload/{j}" for j in range(components)]
        self._encryptors = [Cipher(algorithms.AES(_fixed_key(label)), modes.ECB()).encryptor()
                            for label in labels]

    def encrypt(self, blocks: np.ndarray) -> np.ndarray:
        """AES of every block under every key, (1 + C, M, 2): row 0 the seed key, row 1 + j
        payload key j (the MMO xor with the input is left to the caller)."""
        m = blocks.shape[0]
        # update_into wants one block of slack past what it writes
        out = np.empty((len(self._encryptors), 2 * m + 2), dtype=np.uint64)
        data = memoryview(np.ascontiguousarray(blocks)).cast("B")
        for row, encryptor in zip(out, self._encryptors, strict=True):
            encryptor.update_into(data, memoryview(row).cast("B"))
        return out[:, :2 * m].reshape(len(self._encryptors), m, 2)

    def payload(self, blocks: np.ndarray) -> np.ndarray:
        """Payload words (2C, M) of inputs (M, 2), limb-leading."""
        enc = self.encrypt(blocks)[1:] ^ blocks[None]
        return np.ascontiguousarray(np.moveaxis(enc, 2, 1)).reshape(2 * self.components, -1)


def correction_words(n_keys: int, n_bits: int, words: int) -> int:
    """uint64 words of the correction words of `n_keys` keys (payload `words` = 2C)."""
    return n_keys * (2 * n_bits + words * n_bits + 2 + words)


@dataclass(frozen=True)
class Corrections:
    """The correction words of a batch, common to both keys.

    seed (n, N, 2); value (n, 2C, N); bits (2, N): bit i of bits[0] / bits[1] is level i's
    left / right control-bit correction; leaf (2C, N)."""

    seed: np.ndarray
    value: np.ndarray
    bits: np.ndarray
    leaf: np.ndarray

    @property
    def n_bits(self) -> int:
        return self.seed.shape[0]

    @classmethod
    def from_flat(cls, flat: np.ndarray, n_keys: int, n_bits: int, words: int) -> Corrections:
        """Views into a flat array laid out as [seed, value, bits, leaf]."""
        if flat.dtype != np.uint64 or flat.shape != (correction_words(n_keys, n_bits, words),):
            raise ValueError(f"correction words {flat.dtype}{flat.shape} do not fit "
                             f"{n_keys} keys of {n_bits} bits and {words} payload words")
        sizes = (2 * n_bits * n_keys, words * n_bits * n_keys, 2 * n_keys, words * n_keys)
        cut = np.cumsum(sizes)
        return cls(seed=flat[:cut[0]].reshape(n_bits, n_keys, 2),
                   value=flat[cut[0]:cut[1]].reshape(n_bits, words, n_keys),
                   bits=flat[cut[1]:cut[2]].reshape(2, n_keys),
                   leaf=flat[cut[2]:cut[3]].reshape(words, n_keys))


@dataclass(frozen=True)
class Key:
    """Party `party`'s keys for a batch: its root seeds (N, 2) and the common corrections."""

    party: int
    root: np.ndarray
    corrections: Corrections

    @property
    def size(self) -> int:
        return self.root.shape[0]


def draw_roots(prg: PRG, n_keys: int) -> np.ndarray:
    """Root seeds (N, 2), lowest bit cleared, from `prg` (the dealer draws a party's roots
    from the PRG it shares with that party, which expands the same ones)."""
    roots = prg.ring_elements((n_keys, 2)).copy()
    roots[:, 0] &= CLEAR_LSB
    return roots


def _negate_where(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """x (2C, N) mod 2^128 per component, negated where t (N,) is 1."""
    mask = U64(0) - t
    lo = (x[0::2] ^ mask) + t
    hi = (x[1::2] ^ mask) + (t & (x[0::2] == 0))
    return r128.interleave(lo, hi)


def _mmo_payload(enc: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """Payload words (2C, M) from encrypt()'s output and the input blocks."""
    out = enc[1:] ^ blocks[None]  # (C, M, 2)
    return np.ascontiguousarray(np.moveaxis(out, 2, 1)).reshape(2 * (enc.shape[0] - 1), -1)


def _mmo_seed(enc: np.ndarray, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    seeds = enc[0] ^ blocks
    t = seeds[:, 0] & ONE
    seeds[:, 0] &= CLEAR_LSB
    return seeds, t


# -- one level of the dealer's walk: numba kernel and its numpy twin -----------------------------
# State: blocks (4N, 2) = the next PRG inputs [s0|0, s0|1, s1|0, s1|1], t (2, N) the parties'
# control bits, v_alpha (2C, N) the parties' sum so far on alpha's path.

def _gen_level_numpy(enc: np.ndarray, blocks: np.ndarray, alphas: np.ndarray, shift: int,
                     level: int, payload: np.ndarray, t: np.ndarray, v_alpha: np.ndarray,
                     s_cw: np.ndarray, v_cw: np.ndarray, bits: np.ndarray) -> None:
    n_keys = alphas.size
    a = (alphas >> U64(shift)) & ONE
    seeds, tb = _mmo_seed(enc, blocks)
    values = _mmo_payload(enc, blocks)
    q = [slice(k * n_keys, (k + 1) * n_keys) for k in range(4)]  # p0 L, p0 R, p1 L, p1 R
    right = a.astype(bool)  # alpha's bit is 1: keep the right child, lose the left
    s_keep = [np.where(right[:, None], seeds[q[2 * b + 1]], seeds[q[2 * b]]) for b in (0, 1)]
    t_keep = [np.where(right, tb[q[2 * b + 1]], tb[q[2 * b]]) for b in (0, 1)]
    s_cw[:] = np.where(right[:, None], seeds[q[0]] ^ seeds[q[2]], seeds[q[1]] ^ seeds[q[3]])
    # per side, party 1's payload word minus party 0's
    d_left = r128.sub(values[:, q[2]], values[:, q[0]])
    d_right = r128.sub(values[:, q[3]], values[:, q[1]])
    beta = payload & (U64(0) - a)  # beta where alpha's bit is 1 (losing left: x < alpha)
    # V_CW = (-1)^t1 (v1_lose - v0_lose - V_alpha + [alpha bit] beta)
    lose = np.where(right, d_left, d_right)
    v_cw[:] = _negate_where(r128.add(r128.sub(lose, v_alpha), beta), t[1])
    # then V_alpha - (v1_keep - v0_keep) + (-1)^t1 V_CW
    #    = (v1_lose - v0_lose) - (v1_keep - v0_keep) + [alpha bit] beta
    v_alpha[:] = r128.add(_negate_where(r128.sub(d_right, d_left), a), beta)
    t_left = tb[q[0]] ^ tb[q[2]] ^ a ^ ONE
    t_right = tb[q[1]] ^ tb[q[3]] ^ a
    t_cw_keep = np.where(right, t_right, t_left)
    bits[0] |= t_left << U64(level)
    bits[1] |= t_right << U64(level)
    for b in (0, 1):
        s_new = s_keep[b] ^ (s_cw & (U64(0) - t[b])[:, None])
        blocks[q[2 * b]] = s_new
        blocks[q[2 * b + 1]] = s_new
        blocks[q[2 * b + 1], 0] |= ONE
        t[b] = t_keep[b] ^ (t[b] & t_cw_keep)


_Z = np.uint64(0)
_ONE = np.uint64(1)
_CLEAR = np.uint64((1 << 64) - 2)


@numba.njit(cache=True, nogil=True)
def _gen_level_kernel(enc: np.ndarray, blocks: np.ndarray, alphas: np.ndarray, shift: int,
                      level: int, payload: np.ndarray, t: np.ndarray, v_alpha: np.ndarray,
                      s_cw: np.ndarray, v_cw: np.ndarray,
                      bits: np.ndarray) -> None:  # pragma: no cover - twin: _gen_level_numpy
    n = alphas.shape[0]
    comps = enc.shape[0] - 1
    sh = np.uint64(shift)
    lv = np.uint64(level)
    c0 = np.empty(4, dtype=np.uint64)  # the four children's seed words and bits,
    c1 = np.empty(4, dtype=np.uint64)  # quarter q = 2 * party + side
    tb = np.empty(4, dtype=np.uint64)
    vl = np.empty(4, dtype=np.uint64)
    vh = np.empty(4, dtype=np.uint64)
    for k in range(n):
        a = (alphas[k] >> sh) & _ONE
        keep = 1 if a == _ONE else 0  # 0 left, 1 right
        lose = 1 - keep
        for q in range(4):
            i = q * n + k
            w0 = enc[0, i, 0] ^ blocks[i, 0]
            c1[q] = enc[0, i, 1] ^ blocks[i, 1]
            tb[q] = w0 & _ONE
            c0[q] = w0 & _CLEAR
        cw0 = c0[lose] ^ c0[2 + lose]
        cw1 = c1[lose] ^ c1[2 + lose]
        s_cw[k, 0] = cw0
        s_cw[k, 1] = cw1
        t_left = tb[0] ^ tb[2] ^ a ^ _ONE
        t_right = tb[1] ^ tb[3] ^ a
        bits[0, k] |= t_left << lv
        bits[1, k] |= t_right << lv
        t_cw_keep = t_right if keep == 1 else t_left
        t0 = t[0, k]
        t1 = t[1, k]
        m1 = _Z - t1
        for j in range(comps):
            # payload words of the four children
            for q in range(4):
                i = q * n + k
                vl[q] = enc[1 + j, i, 0] ^ blocks[i, 0]
                vh[q] = enc[1 + j, i, 1] ^ blocks[i, 1]
            # d_side = v1_side - v0_side
            dl_lo = vl[2] - vl[0]
            dl_hi = vh[2] - vh[0] - np.uint64(vl[2] < vl[0])
            dr_lo = vl[3] - vl[1]
            dr_hi = vh[3] - vh[1] - np.uint64(vl[3] < vl[1])
            b_lo = payload[2 * j, k] & (_Z - a)
            b_hi = payload[2 * j + 1, k] & (_Z - a)
            lo_lo = dl_lo if keep == 1 else dr_lo
            lo_hi = dl_hi if keep == 1 else dr_hi
            # x = lose - v_alpha + beta
            va_lo = v_alpha[2 * j, k]
            va_hi = v_alpha[2 * j + 1, k]
            x_lo = lo_lo - va_lo
            x_hi = lo_hi - va_hi - np.uint64(lo_lo < va_lo)
            y_lo = x_lo + b_lo
            y_hi = x_hi + b_hi + np.uint64(y_lo < x_lo)
            # v_cw = (-1)^t1 x
            n_lo = (y_lo ^ m1) + t1
            n_hi = (y_hi ^ m1) + (t1 & np.uint64(y_lo == _Z))
            v_cw[2 * j, k] = n_lo
            v_cw[2 * j + 1, k] = n_hi
            # v_alpha = (-1)^a (d_right - d_left) + beta
            e_lo = dr_lo - dl_lo
            e_hi = dr_hi - dl_hi - np.uint64(dr_lo < dl_lo)
            ma = _Z - a
            f_lo = (e_lo ^ ma) + a
            f_hi = (e_hi ^ ma) + (a & np.uint64(e_lo == _Z))
            g_lo = f_lo + b_lo
            v_alpha[2 * j, k] = g_lo
            v_alpha[2 * j + 1, k] = f_hi + b_hi + np.uint64(g_lo < f_lo)
        m0 = _Z - t0
        s00 = c0[keep] ^ (cw0 & m0)
        s01 = c1[keep] ^ (cw1 & m0)
        s10 = c0[2 + keep] ^ (cw0 & m1)
        s11 = c1[2 + keep] ^ (cw1 & m1)
        blocks[k, 0] = s00
        blocks[k, 1] = s01
        blocks[n + k, 0] = s00 | _ONE
        blocks[n + k, 1] = s01
        blocks[2 * n + k, 0] = s10
        blocks[2 * n + k, 1] = s11
        blocks[3 * n + k, 0] = s10 | _ONE
        blocks[3 * n + k, 1] = s11
        t[0, k] = tb[keep] ^ (t0 & t_cw_keep)
        t[1, k] = tb[2 + keep] ^ (t1 & t_cw_keep)


def gen(alphas: np.ndarray, payload: np.ndarray, prg: PRG | tuple[PRG, PRG],
        n_bits: int = 63, out: np.ndarray | None = None, kernel: bool = True
        ) -> tuple[Key, Key]:
    """Keys for f(x) = payload if x < alpha else 0, one per element of `alphas` (N,) (each
    below 2^n_bits); `payload` (2C, N) uint64, C components of Z_2^128.

    `prg` gives the root seeds: one PRG for both, or a pair (party 0's, party 1's). The
    correction words are written into `out` (flat, `correction_words` long) if given.
    `kernel` False runs the numpy twin of the per-level kernel (tests)."""
    if not 1 <= n_bits <= MAX_BITS:
        raise ValueError(f"a DCF over {n_bits}-bit inputs: choose 1..{MAX_BITS}")
    alphas = np.ascontiguousarray(alphas, dtype=np.uint64).reshape(-1)
    payload = np.ascontiguousarray(payload, dtype=np.uint64)
    n_keys, words = alphas.size, payload.shape[0]
    if payload.ndim != 2 or words % 2 or payload.shape[1] != n_keys:
        raise ValueError(f"payload {payload.shape} must be (2C, {n_keys})")
    if n_bits < MAX_BITS and np.any(alphas >> U64(n_bits)):
        raise ValueError(f"an alpha does not fit in {n_bits} bits")
    prgs = (prg, prg) if isinstance(prg, PRG) else tuple(prg)
    roots = [draw_roots(p, n_keys) for p in prgs]
    if out is None:
        out = np.empty(correction_words(n_keys, n_bits, words), dtype=np.uint64)
    cw = Corrections.from_flat(out, n_keys, n_bits, words)
    cw.bits[:] = 0
    h = FixedKeyHash(words // 2)
    blocks = np.concatenate([roots[0], roots[0], roots[1], roots[1]])
    blocks[n_keys:2 * n_keys, 0] |= ONE
    blocks[3 * n_keys:, 0] |= ONE
    t = np.zeros((2, n_keys), dtype=np.uint64)
    t[1] = 1
    v_alpha = np.zeros((words, n_keys), dtype=np.uint64)
    step = _gen_level_kernel if kernel else _gen_level_numpy
    for level in range(n_bits):
        enc = h.encrypt(blocks)
        step(enc, blocks, alphas, n_bits - 1 - level, level, payload, t, v_alpha,
             cw.seed[level], cw.value[level], cw.bits)
    # the leaf word: the sum on alpha's path is zeroed at x = alpha
    ends = np.concatenate([blocks[:n_keys], blocks[2 * n_keys:3 * n_keys]])  # s0|0, s1|0
    conv = h.payload(ends)
    leaf = r128.sub(r128.sub(conv[:, n_keys:], conv[:, :n_keys]), v_alpha)
    cw.leaf[:] = _negate_where(leaf, t[1])
    return Key(0, roots[0], cw), Key(1, roots[1], cw)


# -- one level of a party's walk: numba kernel and its numpy twin --------------------------------
# State: blocks (N, 2) = this level's PRG inputs s | x_i, t (N,), total (2C, N).

def _eval_level_numpy(enc: np.ndarray, blocks: np.ndarray, s_cw: np.ndarray, v_cw: np.ndarray,
                      bits: np.ndarray, level: int, xs: np.ndarray, shift: int,
                      next_shift: int, t: np.ndarray, total: np.ndarray) -> None:
    d = (xs >> U64(shift)) & ONE
    seeds, tn = _mmo_seed(enc, blocks)
    mask = U64(0) - t
    total[:] = r128.add(total, r128.add(_mmo_payload(enc, blocks), v_cw & mask))
    seeds ^= s_cw & mask[:, None]
    t_cw = (np.where(d.astype(bool), bits[1], bits[0]) >> U64(level)) & ONE
    t[:] = tn ^ (t & t_cw)
    blocks[:] = seeds
    if next_shift >= 0:
        blocks[:, 0] |= (xs >> U64(next_shift)) & ONE


@numba.njit(cache=True, nogil=True)
def _eval_level_kernel(enc: np.ndarray, blocks: np.ndarray, s_cw: np.ndarray, v_cw: np.ndarray,
                       bits: np.ndarray, level: int, xs: np.ndarray, shift: int,
                       next_shift: int, t: np.ndarray,
                       total: np.ndarray) -> None:  # pragma: no cover - twin: _eval_level_numpy
    n = xs.shape[0]
    comps = enc.shape[0] - 1
    sh = np.uint64(shift)
    lv = np.uint64(level)
    nsh = np.uint64(max(next_shift, 0))
    for k in range(n):
        b0 = blocks[k, 0]
        b1 = blocks[k, 1]
        tk = t[k]
        m = _Z - tk
        for j in range(comps):
            p_lo = enc[1 + j, k, 0] ^ b0
            p_hi = enc[1 + j, k, 1] ^ b1
            c_lo = v_cw[2 * j, k] & m
            c_hi = v_cw[2 * j + 1, k] & m
            a_lo = p_lo + c_lo
            a_hi = p_hi + c_hi + np.uint64(a_lo < p_lo)
            s_lo = total[2 * j, k] + a_lo
            total[2 * j + 1, k] += a_hi + np.uint64(s_lo < a_lo)
            total[2 * j, k] = s_lo
        w0 = enc[0, k, 0] ^ b0
        tn = w0 & _ONE
        d = (xs[k] >> sh) & _ONE
        word = bits[1, k] if d == _ONE else bits[0, k]
        t[k] = tn ^ (tk & ((word >> lv) & _ONE))
        nxt = (w0 & _CLEAR) ^ (s_cw[k, 0] & m)
        if next_shift >= 0:
            nxt |= (xs[k] >> nsh) & _ONE
        blocks[k, 0] = nxt
        blocks[k, 1] = (enc[0, k, 1] ^ b1) ^ (s_cw[k, 1] & m)


def eval(party: int, key: Key, xs: np.ndarray,  # noqa: A001 - the FSS name
         kernel: bool = True) -> np.ndarray:
    """Party `party`'s share (2C, N) of payload * [x < alpha] at public inputs xs (N,).
    `kernel` False runs the numpy twin of the per-level kernel (tests)."""
    if party not in (0, 1):
        raise ValueError(f"a DCF has parties 0 and 1, not {party}")
    xs = np.ascontiguousarray(xs, dtype=np.uint64).reshape(-1)
    cw = key.corrections
    n_bits, words, n_keys = cw.n_bits, cw.leaf.shape[0], key.size
    if xs.size != n_keys:
        raise ValueError(f"{xs.size} inputs for {n_keys} keys")
    h = FixedKeyHash(words // 2)
    blocks = key.root.copy()
    blocks[:, 0] |= (xs >> U64(n_bits - 1)) & ONE
    t = np.full(n_keys, party, dtype=np.uint64)
    total = np.zeros((words, n_keys), dtype=np.uint64)
    step = _eval_level_kernel if kernel else _eval_level_numpy
    for level in range(n_bits):
        step(h.encrypt(blocks), blocks, cw.seed[level], cw.value[level], cw.bits, level, xs,
             n_bits - 1 - level, n_bits - 2 - level, t, total)
    # the leaf: the payload words of the last seed, plus t * CW_leaf
    total = r128.add(total, r128.add(h.payload(blocks), cw.leaf & (U64(0) - t)))
    return total if party == 0 else r128.neg(total)


def warmup() -> None:
    """Compile (or load from numba's cache) both level kernels on a one-key batch, so the
    first real gen or eval does not pay for it (the parties call this offline)."""
    prg = PRG(bytes(16))  # public, fixed: nothing here is secret
    keys = gen(np.ones(1, dtype=np.uint64), np.zeros((4, 1), dtype=np.uint64), prg, n_bits=2)
    eval(0, keys[0], np.zeros(1, dtype=np.uint64))
