"""The collapsed crossed/multi-factor Gaussian log-likelihood as a PyTensor Op (one call per NUTS step).

The algebra and the kernel are in :mod:`.crossed_kernel`, the statistics in :mod:`.crossed_stats`.
Here the kernel becomes an Op with a pullback, as the one-factor kernel's ``OneFactorMarginal``:
the log-density is output 0 of an application with ``grad = 1`` and unit weight, and the pullback
applies the same Op to the same inputs with the incoming cotangent as weight, so when that cotangent
is the constant 1 (a model's summed log-density) PyTensor merges the two applications and NUTS pays
one kernel call per evaluation of the log-density and its gradient.

All parameters travel as one flat vector ``theta = [b, sd_0 .. sd_{K-1}, C_0 .. C_{K-1}, sigma]``
(:func:`.crossed_kernel.pack_theta`), so the Op has the same inputs whatever the number of factors;
the data enter as the arrays of :meth:`.crossed_stats.CrossedStats.kernel_data` (constants or shared
variables: the compiled graph depends only on the array ranks, not on n or the numbers of levels).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numba
import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.gradient import disconnected_type
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key

from ..cachedir import cached_njit
from .crossed_kernel import crossed_kernel

__all__ = ["CrossedMarginal", "crossed_logp_tensor", "theta_tensor"]

_THETA = 2            # inputs: grad, w, theta, then the two data arrays (ints, floats)
_N_DATA = 2


class CrossedMarginal(Op):
    """``crossed_kernel`` as an Op: inputs (grad, w, theta, ints, floats), outputs (lp (),
    w * d lp / d theta (P,)). ``ints`` and ``floats`` are :meth:`CrossedStats.kernel_data`.

    ``perform`` runs the kernel in Python (its dense steps are LAPACK calls, the rest numba); in a
    numba-compiled PyMC function it is reached through one object-mode call (~10 us).
    """

    __props__ = ()

    def make_node(self, *inputs):
        if len(inputs) != _THETA + 1 + _N_DATA:
            raise TypeError(f"CrossedMarginal takes {_THETA + 1 + _N_DATA} inputs, got {len(inputs)}")
        inputs = [pt.as_tensor_variable(x) for x in inputs]
        outs = [pt.scalar(dtype="float64"), pt.vector(dtype="float64", shape=(None,))]
        return Apply(self, inputs, outs)

    def infer_shape(self, node, shapes):
        return [(), shapes[_THETA]]

    def perform(self, node, inputs, output_storage):
        lp, g = crossed_kernel(int(inputs[0]), float(inputs[1]), *inputs[_THETA:])
        output_storage[0][0] = np.asarray(lp, dtype=np.float64)
        output_storage[1][0] = np.asarray(g, dtype=np.float64)

    def connection_pattern(self, node):
        # differentiable inputs only: lp depends on theta, the gradient on theta and the weight w
        # (the data are constants for NUTS: declaring them connected would demand their gradients)
        return [[k == _THETA, k in (1, _THETA)] for k in range(len(node.inputs))]

    def pullback(self, inputs, outputs, output_grads):
        if not isinstance(output_grads[1].type, type(disconnected_type)):
            raise NotImplementedError("second derivatives of the crossed collapsed log-density")
        g = self(pt.constant(np.array(1, dtype=np.int64)), output_grads[0], *inputs[_THETA:])[1]
        return [disconnected_type(), disconnected_type(), g] + [disconnected_type() for _ in inputs[_THETA + 1:]]


def _call(grad, w, theta, ints, floats):
    lp, g = crossed_kernel(int(grad), float(w), theta, ints, floats)
    return np.asarray(lp, dtype=np.float64), g


_OUT_TYPE = numba.types.Tuple([numba.types.Array(numba.types.float64, 0, "C"),
                               numba.types.Array(numba.types.float64, 1, "C")])


@cached_njit()
def _op_impl(grad, w, theta, ints, floats):
    with numba.objmode(out=_OUT_TYPE):
        out = _call(grad, w, theta, ints, floats)
    return out


# the hash of the kernel's source joins PyTensor's cache key: an edited kernel never meets a stale wrapper
_SOURCE_KEY = int(hashlib.sha256((Path(__file__).read_bytes()
                                  + (Path(__file__).parent / "crossed_kernel.py").read_bytes())).hexdigest()[:15], 16)


@register_funcify_default_op_cache_key(CrossedMarginal)
def _numba_crossed(op, node, **kwargs):
    return _op_impl, _SOURCE_KEY


def theta_tensor(b, sds, Ccs, sigma):
    """The flat parameter vector as a PyTensor expression (gradients flow back to each piece)."""
    parts = [pt.as_tensor_variable(b).ravel()] + [pt.as_tensor_variable(s).ravel() for s in sds]
    parts += [pt.as_tensor_variable(C).ravel() for C in Ccs] + [pt.as_tensor_variable(sigma).reshape((1,))]
    return pt.concatenate([pt.cast(x, "float64") for x in parts])


def crossed_logp_tensor(b, sds, Ccs, sigma, data) -> pt.TensorVariable:
    """The collapsed log-density (a scalar) as a PyTensor expression, differentiable once.

    Parameters
    ----------
    b : (p,) ; sds : per factor (q_k,) ; Ccs : per factor (q_k, q_k) ; sigma : scalar tensors.
    data : the two arrays of :meth:`CrossedStats.kernel_data`, as PyTensor shared variables
        (swap the data without rebuilding the graph) or numpy arrays (made shared here).
    """
    theta = theta_tensor(b, sds, Ccs, sigma)
    # numpy arrays become shared variables, not constants: a constant is read-only, and numba
    # would compile the kernel again for read-only arrays
    data = [x if isinstance(x, pt.Variable) else pytensor.shared(np.asarray(x), shape=(None,) * np.ndim(x))
            for x in data]
    # computed with the gradient for unit weight: the pullback's application (cotangent 1) then has
    # the same inputs and PyTensor merges the two, so NUTS pays one kernel call per step
    w = pt.constant(np.array(1.0))
    return CrossedMarginal()(pt.constant(np.array(1, dtype=np.int64)), w, theta, *data)[0]


# --------------------------------------------------------------------------------------------
# A PyMC model from arrays
# --------------------------------------------------------------------------------------------
def _lkj_cholesky():
    from .blocks import lkj_cholesky
    return lkj_cholesky


def _blocks_of(f, q: int):
    """(blocks, correlated) of a factor: its own attributes (FactorDesign), else one correlated block."""
    blocks = getattr(f, "blocks", None) or (tuple(range(q)),)
    correlated = getattr(f, "correlated", None) or (q > 1,) * len(blocks)
    return tuple(tuple(b) for b in blocks), tuple(bool(c) for c in correlated)


def build_crossed_model(y, X, factors, priors: dict, *, lkj_eta: float = 2.0, stats=None):
    """The collapsed crossed / multi-factor Gaussian LMM as a ``pm.Model`` (group effects integrated out).

    Parameters
    ----------
    y, X, factors : as :func:`.crossed_stats.crossed_stats`. A factor with ``blocks`` and
        ``correlated`` attributes (``bayeslmm.design.FactorDesign``) gets one LKJ correlation per
        correlated block; otherwise all its terms form one correlated block.
    priors : dict of unnamed PyMC distributions (``pm.Normal.dist(...)``): ``"b"`` (shape p),
        ``"sd_{name}"`` per factor (shape q_k, positive), ``"sigma"`` (positive scalar). They are
        registered under those names with PyMC's default transforms.
    lkj_eta : LKJ shape of every correlated block (free variables ``cpc_{name}[_{k}]``).
    stats : precomputed :class:`.crossed_stats.CrossedStats` (else computed here).

    Returns
    -------
    pm.Model with free variables ``b``, ``sd_{name}``, ``cpc_{name}``, ``sigma``, deterministic
    ``cor_{name}`` and the likelihood as the potential ``y_marginal``. The data are two shared
    variables without static shapes, ``crossed_ints`` and ``crossed_floats`` (the compiled model
    depends on the design's structure, not its size).

    Examples
    --------
    >>> import numpy as np, pymc as pm
    >>> from bayeslmm.paths.crossed_stats import Factor
    >>> rng = np.random.default_rng(0)
    >>> s, i = np.repeat(np.arange(6), 4), np.tile(np.arange(4), 6)
    >>> one = np.ones((24, 1))
    >>> m = build_crossed_model(rng.normal(size=24), one, [Factor("s", s, one, 6), Factor("i", i, one, 4)],
    ...     {"b": pm.Normal.dist(0, 5, shape=1), "sd_s": pm.HalfNormal.dist(1, shape=1),
    ...      "sd_i": pm.HalfNormal.dist(1, shape=1), "sigma": pm.HalfNormal.dist(1)})
    >>> sorted(v.name for v in m.free_RVs)
    ['b', 'sd_i', 'sd_s', 'sigma']
    """
    import pymc as pm

    from ..errors import PriorError
    from .crossed_stats import crossed_stats

    st = stats if stats is not None else crossed_stats(y, X, factors)
    names = [f"sd_{nm}" for nm in st.names]
    missing = [k for k in ["b", *names, "sigma"] if k not in priors]
    if missing:
        raise PriorError(f"build_crossed_model: no prior for {', '.join(missing)}; pass them in `priors` "
                         "as unnamed PyMC distributions, e.g. priors['sigma'] = pm.HalfNormal.dist(10)")
    lkj = _lkj_cholesky()
    with pm.Model() as model:
        data = [pytensor.shared(np.asarray(x), name=f"crossed_{k}", shape=(None,) * np.ndim(x))
                for k, x in zip(("ints", "floats"), st.kernel_data())]
        b = model.register_rv(priors["b"], "b")
        sds, Ccs = [], []
        for f, nm, qk in zip(factors, st.names, st.q):
            sds.append(model.register_rv(priors[f"sd_{nm}"], f"sd_{nm}"))
            blocks, correlated = _blocks_of(f, qk)
            corr = [blk for blk, c in zip(blocks, correlated) if c and len(blk) > 1]
            C = pt.eye(qk)
            for k, blk in enumerate(corr):
                L = lkj(f"cpc_{nm}" + (f"_{k}" if len(corr) > 1 else ""), len(blk), lkj_eta)
                C = pt.set_subtensor(C[blk[0]:blk[-1] + 1, blk[0]:blk[-1] + 1], L)
            if corr:
                pm.Deterministic(f"cor_{nm}", pt.dot(C, C.T))
            Ccs.append(C)
        sigma = model.register_rv(priors["sigma"], "sigma")
        pm.Potential("y_marginal", crossed_logp_tensor(b, sds, Ccs, sigma, data))
    return model
