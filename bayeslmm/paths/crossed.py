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
import pytensor.tensor as pt
from pytensor.gradient import disconnected_type
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key

from .crossed_kernel import crossed_kernel

__all__ = ["CrossedMarginal", "crossed_logp_tensor", "theta_tensor"]

_THETA = 2            # inputs: grad, w, theta, then the eleven data arrays
_N_DATA = 11


class CrossedMarginal(Op):
    """``crossed_kernel`` as an Op: inputs (grad, w, theta, layout, blocks, b0, D1, B, E, ZtX, Zte,
    XtX, Xte, ete), outputs (lp (), w * d lp / d theta (P,)).

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


def _call(grad, w, theta, *data):
    lp, g = crossed_kernel(int(grad), float(w), theta, *data)
    return np.asarray(lp, dtype=np.float64), g


_OUT_TYPE = numba.types.Tuple([numba.types.Array(numba.types.float64, 0, "C"),
                               numba.types.Array(numba.types.float64, 1, "C")])


@numba.njit(cache=True)
def _op_impl(grad, w, theta, layout, blocks, b0, D1, B, E, ZtX, Zte, XtX, Xte, ete):
    with numba.objmode(out=_OUT_TYPE):
        out = _call(grad, w, theta, layout, blocks, b0, D1, B, E, ZtX, Zte, XtX, Xte, ete)
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
    data : the eleven arrays of :meth:`CrossedStats.kernel_data`, as numpy arrays (become constants)
        or PyTensor shared variables (swap the data without rebuilding the graph).
    """
    theta = theta_tensor(b, sds, Ccs, sigma)
    # computed with the gradient for unit weight: the pullback's application (cotangent 1) then has
    # the same inputs and PyTensor merges the two, so NUTS pays one kernel call per step
    w = pt.constant(np.array(1.0))
    return CrossedMarginal()(pt.constant(np.array(1, dtype=np.int64)), w, theta, *data)[0]
