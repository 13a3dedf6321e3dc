"""The AGHQ kernel as a PyTensor Op, so that NUTS evaluates the collapsed GLMM likelihood in one call.

Same design as :mod:`bayeslmm.paths.collapsed_kernel` (the Gaussian kernel): the log-likelihood is output 0
of an application with ``grad = 1`` and unit weights; its gradient is outputs 1-4 of an application
of the same Op with ``grad = 1`` and the incoming cotangent as weights. When the per-group
log-likelihoods are summed (a model's logp) the cotangent is ones, the two applications have the
same inputs, and PyTensor merges them: NUTS pays one kernel call per step.

``linked``: True links the kernel into the compiled model function (nutpie needs it: it evaluates
the model from Rust threads that would wait for the GIL at every object-mode call). False calls it
through numba's object mode, which saves linking it into every enclosing compiled function: at
100,000 rows a cold PyTensor cache compiled in 7-8 s instead of 18-19 s, at the same cost per call
(5.1-5.3 ms against 5.2-7.0 ms, interleaved). :func:`~bayeslmm.paths.quadrature_path.build_quadrature_model`
links only for nutpie. (An earlier measurement had the object-mode call 1.7x slower, not seen
again; the object-mode variant then stopped compiling inside a model: read-only arrays, such as the
0-d constant ``phi``, were copied with ``np.ascontiguousarray``, which turns a 0-d array into a 1-d
one. :func:`_call_kernel` copies them with ``copy`` now.)
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

from .quadrature import QuadratureData, kernel_arrays
from .quadrature_families import njit
from .quadrature_kernel import aghq_kernel
from .quadrature_mode import n_start_coords, newton_v0

__all__ = ["AGHQLogLik", "aghq_logp", "op_data", "DATA_NAMES"]

N_PARAMS = 4          # b, sd, C_chol, phi; after (grad, w), before the data arrays
FIRST = 2
DATA_NAMES = ("y", "trials", "offset", "Xt", "Zt", "starts", "ictl", "nodes", "lwn", "rules", "rule_of", "lplan",
              "lrows", "u0", "const")


@njit(cache=True, nogil=True)
def op_kernel(grad, w, b, sd, Cc, phi, y, trials, offset, Xt, Zt, starts, ictl, nodes, lwn, rules, rule_of, lplan,
              lrows, u0, const):
    """:func:`aghq_kernel` without the modes: the Op's five outputs.

    Newton starts at ``u0`` (J, q, 1 + P), each group's start in the scale of the terms as a linear
    function of the parameters (:func:`~bayeslmm.paths.quadrature_nodes.newton_start`), converted
    to the standardised scale v = T^-1 u of these parameters (T = diag(sd) Cc, lower triangular) by
    :func:`~bayeslmm.paths.quadrature_mode.newton_v0`; a start that is not finite there (sd = 0),
    far out, or absent (u0 with no rows) is zero.
    """
    v0 = newton_v0(u0, b, sd, Cc, phi[()], starts.shape[0] - 1)
    lp, gb, gsd, gC, gphi, _ = aghq_kernel(grad, w, b, sd, Cc, phi, v0, y, trials, offset, Xt, Zt, starts, ictl,
                                           nodes, lwn, rules, rule_of, lplan, lrows, const)
    return lp, gb, gsd, gC, gphi


class AGHQLogLik(Op):
    """Inputs (grad, w, b, sd, C_chol, phi, *data), outputs (logL (J,), d/db, d/dsd, d/dC_chol, d/dphi).

    ``data`` are the fifteen arrays of :func:`op_data` in the order of :data:`DATA_NAMES`.
    """

    __props__ = ("linked",)

    def __init__(self, linked: bool = False):
        self.linked = bool(linked)

    def make_node(self, *inputs):
        inputs = [pt.as_tensor_variable(x) for x in inputs]
        outs = [pt.vector(dtype="float64", shape=(None,))] + [inputs[FIRST + k].type() for k in range(N_PARAMS)]
        return Apply(self, inputs, outs)

    def infer_shape(self, node, shapes):
        # one log-likelihood per group (the length of const, the last input)
        return [(shapes[-1][0],)] + [shapes[FIRST + k] for k in range(N_PARAMS)]

    def perform(self, node, inputs, output_storage):
        for k, out in enumerate(_call_kernel(*inputs)):
            output_storage[k][0] = out

    def connection_pattern(self, node):
        return [[k < FIRST + N_PARAMS and (k >= FIRST or o > 0) for o in range(1 + N_PARAMS)]
                for k in range(len(node.inputs))]

    def pullback(self, inputs, outputs, output_grads):
        g = output_grads[0]
        if any(not isinstance(og.type, type(disconnected_type)) for og in output_grads[1:]):
            raise NotImplementedError("second derivatives of the AGHQ log-likelihood")
        grads = self(pt.constant(np.array(1)), g, *inputs[FIRST:])[1:]
        return ([disconnected_type(), disconnected_type()] + list(grads)
                + [disconnected_type() for _ in inputs[FIRST + N_PARAMS:]])


_INT = (0, 11, 12, 15, 16, 17)        # grad, starts, ictl, rules, rule_of, lplan: int64; the rest float64


def _call_kernel(*args):
    arrs = []
    for k, a in enumerate(args):
        a = np.asarray(a, dtype=np.int64 if k in _INT else np.float64)
        # a.copy() keeps a 0-d array 0-d (np.ascontiguousarray would make it 1-d)
        arrs.append(a if a.flags.writeable and a.flags.c_contiguous else a.copy(order="C"))
    return op_kernel(*arrs)


_F64 = [numba.types.Array(numba.types.float64, nd, "C") for nd in range(3)]
_OUT_TYPE = numba.types.Tuple([_F64[1], _F64[1], _F64[1], _F64[2], _F64[0]])


@njit(cache=True)
def _op_impl(grad, w, b, sd, Cc, phi, y, trials, offset, Xt, Zt, starts, ictl, nodes, lwn, rules, rule_of, lplan,
             lrows, u0, const):
    # object mode: see the module docstring (and collapsed_kernel._op_impl for the measured why)
    with numba.objmode(out=_OUT_TYPE):
        out = _call_kernel(grad, w, b, sd, Cc, phi, y, trials, offset, Xt, Zt, starts, ictl, nodes, lwn, rules,
                           rule_of, lplan, lrows, u0, const)
    return out


# the hash of the kernel sources joins PyTensor's cache key, so an edited kernel never meets a
# stale cached wrapper
_SOURCE_KEY = int(hashlib.sha256(b"".join(
    (Path(__file__).parent / f).read_bytes()
    for f in ("quadrature_op.py", "quadrature_kernel.py", "quadrature_mode.py", "quadrature_families.py",
              "quadrature_fused.py", "quadrature_lockstep.py", "quadrature_q1.py"))
).hexdigest()[:15], 16)


@register_funcify_default_op_cache_key(AGHQLogLik)
def _numba_aghq(op, node, **kwargs):
    return (op_kernel if op.linked else _op_impl), _SOURCE_KEY


def op_data(data: QuadratureData, n_nodes=None, u0=None) -> dict[str, np.ndarray]:
    """The Op's data arrays by name (:data:`DATA_NAMES`), for ``pytensor.shared`` or constants.

    ``n_nodes``: nodes per axis, one number or one per group (J,); default :func:`default_nodes`.
    ``u0``: Newton's start per group in the scale of the terms (:func:`op_kernel`): (J, q, 1 + P)
    from :func:`~bayeslmm.paths.quadrature_nodes.newton_start`, or a fixed (J, q); None starts at zero.
    """
    arrays = kernel_arrays(data, n_nodes)
    J, q = data.n_groups, data.q
    if u0 is None:
        u0 = np.zeros((0, q, 1))
    else:
        u0 = np.asarray(u0, dtype=float)
        u0 = u0.reshape(J, q, -1) if u0.ndim == 3 else u0.reshape(J, q, 1)
        if u0.shape[2] not in (1, 1 + n_start_coords(data.p, q)):
            raise ValueError(f"u0 must be (J, q), or (J, q, {1 + n_start_coords(data.p, q)}) for a first-order "
                             f"start, got {u0.shape}")
        u0 = np.ascontiguousarray(u0)
    return dict(zip(DATA_NAMES, arrays[:-1] + [u0, arrays[-1]]))


def aghq_logp(b, sd, Cc, phi, *data, linked: bool = False):
    """Per-group AGHQ log-likelihoods (J,) as a PyTensor expression (differentiable once).

    ``data``: the arrays of :func:`op_data` in order (constants or shared variables);
    ``phi`` is ignored except by the negative binomial (pass 1.0 otherwise).
    """
    w = pt.ones_like(data[-1])
    return AGHQLogLik(linked)(pt.constant(np.array(1)), w, b, sd, Cc, phi, *data)[0]
