"""The rotated kinship log-density and its exact gradient as one compiled kernel and PyTensor Op.

On the rotated data of :func:`bayeslmm.kinship.rotate` (k between-level coordinates with
variances v_i = sd_g^2 lam_i + sigma^2, and a within-level part of dimension n_w with variance
sigma^2, held as sufficient statistics), with e_i = y~_i - X~_i b, w_i = 1 / v_i and
q = rss_w + (b - b_w)'X_w'X_w (b - b_w):

    log p = -1/2 [n log 2 pi + sum_i (log v_i + e_i^2 w_i) + n_w log sigma^2 + q / sigma^2]
    d/db     = sum_i w_i e_i X~_i - X_w'X_w (b - b_w) / sigma^2
    d/dsd_g  = sd_g sum_i lam_i (e_i^2 w_i^2 - w_i)
    d/dsigma = sigma [sum_i (e_i^2 w_i^2 - w_i) + q / sigma^4 - n_w / sigma^2]

One evaluation is O(k p + p^2). The Op returns the log-density and the three gradients from one
call; its pullback reuses those outputs, so NUTS pays one kernel call per step. Written as in
:mod:`bayeslmm.marginal_kernel` (numba, called through object mode unless ``linked``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numba
import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import disconnected_type
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key

__all__ = ["kinship_kernel", "logp_and_grad", "KinshipLogp", "kinship_logp"]

LOG_2PI = float(np.log(2.0 * np.pi))
N_PARAMS = 3            # b, sd_g, sigma; then the eight data arrays of KinshipData.arrays()


@numba.njit(cache=True, nogil=True, error_model="numpy")
def kinship_kernel(b, sd, sigma, lam, yt, Xt, n_w, rss_w, b_w, XtX_w, n):
    """(log p (0-d), d/db (p,), d/dsd_g (0-d), d/dsigma (0-d)); see the module docstring."""
    k, p = Xt.shape
    sdv = sd.item()
    sgv = sigma.item()
    sg2 = sdv * sdv
    se2 = sgv * sgv
    acc = 0.0
    g_lam = 0.0           # sum_i lam_i (e_i^2 w_i^2 - w_i)
    g_one = 0.0           # sum_i (e_i^2 w_i^2 - w_i)
    gb = np.zeros(p)
    for i in range(k):
        e = yt[i]
        for j in range(p):
            e -= Xt[i, j] * b[j]
        w = 1.0 / (sg2 * lam[i] + se2)
        ew = e * w
        acc += -np.log(w) + e * ew
        for j in range(p):
            gb[j] += ew * Xt[i, j]
        a = ew * ew - w
        g_lam += lam[i] * a
        g_one += a
    nw = n_w.item()
    if nw > 0:
        d = b - b_w
        q = rss_w.item()
        for j in range(p):
            Ad = 0.0
            for m in range(p):
                Ad += XtX_w[j, m] * d[m]
            q += d[j] * Ad
            gb[j] -= Ad / se2
        acc += nw * np.log(se2) + q / se2
        g_one += q / (se2 * se2) - nw / se2
    lp = np.empty(())
    lp[()] = -0.5 * (n.item() * LOG_2PI + acc)
    gsd = np.empty(())
    gsd[()] = sdv * g_lam
    gsigma = np.empty(())
    gsigma[()] = sgv * g_one
    return lp, gb, gsd, gsigma


def _writable(args) -> list[np.ndarray]:
    """Read-only or non-float arrays would be another numba specialisation: copy them."""
    return [a if (a.flags.writeable and a.dtype == np.float64 and a.flags.c_contiguous)
            else np.ascontiguousarray(a, dtype=np.float64).copy() for a in (np.asarray(x) for x in args)]


def _call_kernel(*args):
    return kinship_kernel(*_writable(args))


def logp_and_grad(data, b, sd_g, sigma):
    """Log-density and gradient at one point, in NumPy (for tests, probes and optimisers).

    Parameters
    ----------
    data : KinshipData
    b : array (p,)
    sd_g, sigma : float

    Returns
    -------
    (float, numpy.ndarray (p,), float, float)
        log p, d/db, d/dsd_g, d/dsigma.
    """
    lp, gb, gsd, gsigma = _call_kernel(np.asarray(b, dtype=float), np.array(float(sd_g)),
                                       np.array(float(sigma)), *data.arrays())
    return float(lp), gb, float(gsd), float(gsigma)


class KinshipLogp(Op):
    """``kinship_kernel`` as a PyTensor Op: inputs (b, sd_g, sigma, *data), outputs
    (log p, d/db, d/dsd_g, d/dsigma). Differentiable once.

    ``linked``: False (PyMC's NUTS) calls the kernel through numba's object mode, so it is not
    re-linked into every enclosing compiled function; True (nutpie, which evaluates the model from
    threads that would wait for the GIL) links it. See ``bayeslmm.marginal_kernel``.
    """

    __props__ = ("linked",)

    def __init__(self, linked: bool = False):
        self.linked = bool(linked)

    def make_node(self, *inputs):
        inputs = [pt.as_tensor_variable(x) for x in inputs]
        if len(inputs) != N_PARAMS + 8:
            raise TypeError(f"KinshipLogp takes b, sd_g, sigma and 8 data arrays; got {len(inputs)} inputs")
        outs = [pt.scalar(dtype="float64")] + [inputs[k].type() for k in range(N_PARAMS)]
        return Apply(self, inputs, outs)

    def infer_shape(self, node, shapes):
        return [()] + [shapes[k] for k in range(N_PARAMS)]

    def perform(self, node, inputs, output_storage):
        for k, out in enumerate(_call_kernel(*inputs)):
            output_storage[k][0] = out

    def connection_pattern(self, node):
        return [[k < N_PARAMS for _ in range(1 + N_PARAMS)] for k in range(len(node.inputs))]

    def pullback(self, inputs, outputs, output_grads):
        if any(not isinstance(og.type, type(disconnected_type)) for og in output_grads[1:]):
            raise NotImplementedError("second derivatives of the kinship log-density")
        g = output_grads[0]
        return [g * outputs[k] for k in range(1, 1 + N_PARAMS)] + [
            disconnected_type() for _ in inputs[N_PARAMS:]]


_F64 = [numba.types.Array(numba.types.float64, nd, "C") for nd in range(2)]
_OUT_TYPE = numba.types.Tuple([_F64[0], _F64[1], _F64[0], _F64[0]])


@numba.njit(cache=True)
def _op_impl(b, sd, sigma, lam, yt, Xt, n_w, rss_w, b_w, XtX_w, n):
    # an object-mode call: see OneFactorMarginal in bayeslmm.marginal_kernel for why
    with numba.objmode(out=_OUT_TYPE):
        out = _call_kernel(b, sd, sigma, lam, yt, Xt, n_w, rss_w, b_w, XtX_w, n)
    return out


# an edited kernel must never meet a stale cached wrapper: the file's hash is in the cache key
_SOURCE_KEY = int(hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:15], 16)


@register_funcify_default_op_cache_key(KinshipLogp)
def _numba_kinship(op, node, **kwargs):
    return (kinship_kernel if op.linked else _op_impl), _SOURCE_KEY


def kinship_logp(data, b, sd_g, sigma, *, linked: bool = False):
    """The kinship log-density as a scalar PyTensor expression (differentiable once).

    Parameters
    ----------
    data : KinshipData or list of 8 tensors
        The rotated data (as constants), or its ``arrays()`` as constants / shared variables.
    b : tensor (p,)
    sd_g, sigma : scalar tensors
    linked : bool
        See :class:`KinshipLogp`.
    """
    arrays = data.arrays() if hasattr(data, "arrays") else list(data)
    arrays = [pt.constant(a) if isinstance(a, np.ndarray) else a for a in arrays]
    return KinshipLogp(linked)(b, sd_g, sigma, *arrays)[0]
