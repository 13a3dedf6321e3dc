"""Refitting one model structure to many simulated responses (SBC), through :mod:`bayeslmm.sampling`.

The graph sampled is always the package's own (the non-centred graph or the collapsed model, as
:func:`bayeslmm.paths.choose_path` decides); only the NUTS implementation differs. Data names come
from the paths (``data_values``), never spelled out here.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import numpy as np

from ..families import family_of
from ..paths import choose_path
from ..posterior import stored_var_names

__all__ = ["PathRefitter", "ModelRefitter", "make_refitter"]


class PathRefitter:
    """Compile the path's PyMC model once; each replicate only swaps the data.

    On the collapsed paths a new ``y`` changes ``b0``, ``Z'e``, ``X'e`` and ``e'e``: they are
    recomputed in numpy and swapped in, and the random effects are then drawn exactly from their
    conditional, as :func:`bayeslmm.paths.collapsed.sample_collapsed` does.
    """

    def __init__(self, model, plan, engine: str, target_accept: float):
        from ..sampling import CompiledSampler
        from ..stats import group_stats
        self.design, self.plan = model.design, plan
        family = model.spec.family
        self.family, self.link = family, model.spec.link
        if plan.path == "quadrature":
            from ..paths.quadrature_path import build_quadrature_model, quadrature_data
            pm_model = build_quadrature_model(self.design, model.prior_table, family, self.link,
                                              data=quadrature_data(self.design, family, self.link), n_nodes=3,
                                              sampler=engine)
            self.aux = family_of(model.spec).aux_names
            names = None
        elif plan.path == "crossed":
            from ..paths.crossed_path import build_crossed_path_model
            pm_model = build_crossed_path_model(self.design, model.prior_table)
            names = None
        elif plan.path == "collapsed":
            from ..paths.collapsed import build_collapsed_model
            pm_model = build_collapsed_model(self.design, model.prior_table, group_stats(self.design, plan.chain),
                                             sampler=engine, chain=plan.chain)
            names = None
        else:
            from ..paths.noncentred import build_model
            pm_model = build_model(self.design, model.prior_table, family, model.spec.link)
            names = stored_var_names(self.design, family_of(model.spec).aux_names)
        self.sampler = CompiledSampler(pm_model, engine, var_names=names, target_accept=target_accept)

    def _data(self, y):
        if self.plan.path == "quadrature":       # new y: new kernel data, nodes checked on it
            from ..paths.quadrature_op import op_data
            from ..paths.quadrature_path import choose_nodes, quadrature_data
            data = quadrature_data(replace(self.design, y=np.asarray(y, dtype=float)), self.family, self.link)
            k, _ = choose_nodes(data)
            return {f"aghq_{n}": v for n, v in op_data(data, k).items()}, data
        if self.plan.path not in ("collapsed", "crossed"):
            from ..paths.noncentred import data_values
            return data_values(y), None
        if self.plan.path == "crossed":
            from ..paths.crossed_path import data_values as crossed_values, design_stats
            stats = design_stats(self.design, y)
            values = crossed_values(stats)
        else:
            from ..paths.collapsed import data_values
            from ..stats import group_stats
            stats = group_stats(replace(self.design, y=np.asarray(y, dtype=float)), self.plan.chain)
            values = data_values(stats)
        known = self.sampler.data_names
        missing = known - set(values)
        if missing:
            raise RuntimeError(f"no new values for the model's data {sorted(missing)}")
        return {k: v for k, v in values.items() if k in known}, stats

    def __call__(self, y, *, seed, chains, draws, tune):
        data, stats = self._data(y)
        post, n_div = self.sampler.sample(data, seed=seed, chains=chains, draws=draws, tune=tune)
        if self.plan.path == "quadrature":
            from ..paths.quadrature_path import add_quadrature_effects
            post, _ = add_quadrature_effects(post, self.design, stats, self.aux, seed)
        elif stats is not None and self.plan.path == "crossed":
            from ..paths.crossed_path import add_crossed_effects
            post = add_crossed_effects(post, self.design, stats, seed)
        elif stats is not None:
            from ..paths.collapsed import add_drawn_effects
            post = add_drawn_effects(post, self.design, stats, self.plan.chain, seed)
        return post, n_div


class ModelRefitter:
    """The public path: a new ``Model(...).fit(...)`` per replicate (slowest, most faithful)."""

    def __init__(self, model, method: str, target_accept: float):
        self.model = model
        self.method = method
        self.target_accept = target_accept

    def __call__(self, y, *, seed, chains, draws, tune):
        from ..model import Model
        m = Model(self.model.spec, self.model.design.data_frame(y))
        fit = m.fit(chains=chains, draws=draws, tune=tune, seed=seed, progressbar=False,
                    method=self.method, verbose=False, cores=1, target_accept=self.target_accept)
        ss = fit.idata["sample_stats"]
        div = int(np.asarray(ss["diverging"]).sum()) if "diverging" in ss else 0
        return fit.posterior, div


def make_refitter(model, method: str, *, engine: str = "auto", target_accept: float = 0.9):
    """A callable ``(y, seed=, chains=, draws=, tune=) -> (posterior Dataset, n_divergent)`` and the
    engine used.

    ``engine``: ``"nutpie"`` (compile once, swap data; the default where nutpie is installed),
    ``"pymc"`` (PyMC's NUTS with ``pm.set_data``; the collapsed path then refits through
    ``Model.fit``) or ``"model"`` (``Model.fit`` per replicate).
    """
    if engine == "auto":
        engine = "nutpie" if importlib.util.find_spec("nutpie") else "pymc"
    if engine == "model":
        return ModelRefitter(model, method, target_accept), engine
    plan = choose_path(model.spec, model.design, method)
    if plan.path in ("collapsed", "crossed", "quadrature") and engine != "nutpie":
        return ModelRefitter(model, method, target_accept), "model"
    return PathRefitter(model, plan, engine, target_accept), engine
