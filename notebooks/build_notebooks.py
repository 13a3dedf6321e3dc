"""Write the teaching notebooks (notebooks/*.ipynb) from the cell sources below.

The notebooks are generated so that their content is reviewable as plain Python here; they are
stored WITH their outputs (so they read on a code host without running) and executed again by
tests/test_notebooks.py (nbclient). After changing a cell here, rebuild and re-execute them::

    make notebooks          # = .venv/bin/python notebooks/build_notebooks.py --execute
    .venv/bin/python notebooks/build_notebooks.py --execute --only 02_   # one notebook

Every notebook checks its teaching claims: the trailing ``assert`` lines of a cell go into a
separate cell tagged ``check`` (source hidden in Jupyter; see :func:`code`), so a student need not
read them and the test suite fails if a claim stops holding. Exercises are markdown cells followed
by a ``solution`` cell (source hidden).
Chains are short (2 x 400 draws) to keep the suite fast; the prose says so.
"""

from __future__ import annotations

import os
import re
import textwrap
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(text: str):
    return new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str):
    """A code cell; its trailing checks (``assert`` lines, with the assignments between them) go to
    a separate cell tagged ``check`` (collapsed in Jupyter; the tests run every cell, so each claim
    is still checked) and the cell is returned as a tuple (body, check)."""
    src = textwrap.dedent(text).strip()
    lines = src.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("assert ")), None)
    if first is None or not all(_check_line(line) for line in lines[first:]):
        return new_code_cell(src)
    while first > 0 and lines[first - 1].startswith("#"):       # its comment goes with it
        first -= 1
    body = "\n".join(lines[:first]).strip()
    chk = check("\n".join(lines[first:]))
    return (new_code_cell(body), chk) if body else chk


def _check_line(line: str) -> bool:
    """A line of a trailing check block: an assert, a continuation, a comment or a plain assignment."""
    return (not line or line[0] in " #)]}" or line.startswith("assert ")
            or re.match(r"^[A-Za-z_][A-Za-z_0-9]* = ", line) is not None)


def check(text: str):
    """A code cell that checks a claim of the notebook: tagged ``check``, its source hidden."""
    return new_code_cell(textwrap.dedent(text).strip(),
                         metadata={"tags": ["check"], "jupyter": {"source_hidden": True}})


def solution(text: str):
    """The solution of an exercise: tagged ``solution``, its source hidden until clicked."""
    return new_code_cell(textwrap.dedent(text).strip(),
                         metadata={"tags": ["solution"], "jupyter": {"source_hidden": True}})


def flatten(cells) -> list:
    """The notebook's cells, with the (body, check) pairs of :func:`code` spread out."""
    return [c for item in cells for c in (item if isinstance(item, tuple) else (item,))]


SETUP = code("""
    import warnings
    from pathlib import Path

    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    import bayeslmm as blmm

    warnings.filterwarnings("ignore", message=".*BLAS.*")
    ROOT = Path.cwd() if (Path.cwd() / "models").is_dir() else Path.cwd().parent   # repo root
    # Short chains keep this notebook fast enough for the test suite. For a real analysis use the
    # defaults (4 chains x 1000 draws) and check fit.diagnostics().
    FAST = dict(chains=2, draws=400, tune=400, progressbar=False)
    plt.rcParams["figure.dpi"] = 80
    pd.options.display.precision = 4       # tables made here print rounded (bayeslmm's own tables do already)
""")

FAST_NOTE = md("""
    *Short chains (2 x 400 draws) keep this notebook fast enough to run in the test suite; for a real
    analysis use the defaults (4 chains x 1000 draws) and look at `fit.diagnostics()`.*
""")

# -------------------------------------------------------------------------------------------------
NB1 = [
    md("""
    # 1. Repeated measures: why OLS standard errors are too small

    Twenty-four pigeons took part in a conditioning experiment: 12 were **trained**, 12 were
    **controls**, and each pigeon's peck rate (pecks per minute) was measured in **10 sessions**.
    That gives 240 rows, but not 240 independent pieces of information:

    * a pigeon that pecks fast in session 1 tends to peck fast in every session, so its 10
      measurements share a pigeon effect; they are *correlated*;
    * `condition` varies only **between** pigeons. Whether training works is a comparison of 12
      pigeons with 12 pigeons: 24 independent units, not 240.

    Ordinary least squares (OLS) assumes every row has its own independent error. With repeated
    measures that assumption fails, and the standard error of a between-pigeon effect comes out far
    too small, so the t-statistic is too big and "significant" effects appear where there are
    none. A linear mixed model (LMM) with a random intercept per pigeon models the shared pigeon
    effect and gets the uncertainty right.

    The data are simulated (`models/data/simulate.py`, documented in `models/data/README.md`), so we
    know the truth: intercept 40, trained **+6**, session +1.5 per session, between-pigeon SD 6,
    residual SD 3.
    """),
    SETUP,
    code("""
    import statsmodels.formula.api as smf

    mf = blmm.load_model_file(ROOT / "models" / "pigeons_repeated.toml")
    df = mf.load_data()
    print(mf.spec.formula.text, "|", len(df), "rows,", df["pigeon"].nunique(), "pigeons")
    df.head()
    """),
    code("""
    fig, ax = plt.subplots(figsize=(7, 4))
    for (pigeon, cond), d in df.groupby(["pigeon", "condition"]):
        ax.plot(d["session"], d["peck_rate"], color="C1" if cond == "trained" else "C0", alpha=0.6)
    ax.set(xlabel="session", ylabel="peck rate (pecks/min)",
           title="Each line is one pigeon (blue: control, orange: trained)")
    plt.show()
    """),
    md("""
    The lines are roughly parallel but sit at very different heights: most of the variation is
    *between* pigeons. Within a pigeon the 10 measurements are close to each other.

    ## The naive analysis: OLS on all 240 rows
    """),
    code("""
    ols = smf.ols("peck_rate ~ condition + session", data=df).fit()
    ols_table = pd.DataFrame({"estimate": ols.params, "OLS SE": ols.bse})
    ols_table
    """),
    md("""
    OLS is fine for the *estimates*, but its standard errors assume independent errors. Look at the
    residuals: if they were independent, two residuals of the same pigeon would be uncorrelated.
    """),
    code("""
    resid = ols.resid.groupby(df["pigeon"])
    # one-way ANOVA estimate of the correlation of two residuals from the same pigeon
    m = 10
    msb = m * resid.mean().var(ddof=1)
    msw = resid.var(ddof=1).mean()
    resid_icc = (msb - msw) / (msb + (m - 1) * msw)
    print(f"correlation of two OLS residuals from the same pigeon: {resid_icc:.2f}")
    assert resid_icc > 0.5, "the residuals of one pigeon should be strongly correlated"
    """),
    md("""
    The residuals of one pigeon are strongly correlated: the independence assumption is badly
    violated.

    ## The mixed model: a random intercept per pigeon

    `peck_rate ~ condition + session + (1 | pigeon)` gives each pigeon its own baseline, drawn from
    a normal distribution whose SD is estimated. The model file `models/pigeons_repeated.toml`
    holds the formula, the data path and the priors; here we fit it with short chains.
    """),
    FAST_NOTE,
    code("""
    model = mf.build_model()
    fit = model.fit(**FAST, seed=mf.sampler.seed, verbose=False)
    summary = fit.summary()
    summary[["mean", "sd", "hdi_lower", "hdi_upper", "r_hat"]]
    """),
    code("""
    fit.variance_components()[["mean", "hdi_lower", "hdi_upper"]]
    """),
    md("""
    ## Comparing the standard errors

    The posterior SD plays the role of the standard error. We also compute the classical "honest"
    analysis of the between-pigeon effect: average each pigeon's 10 measurements and compare the
    24 averages (one row per independent unit).
    """),
    code("""
    means = df.groupby(["pigeon", "condition"], as_index=False)["peck_rate"].mean()
    by_pigeon = smf.ols("peck_rate ~ condition", data=means).fit()

    terms = ["condition[T.trained]", "session"]
    se = pd.DataFrame({
        "OLS SE (240 rows)": ols.bse[terms],
        "LMM posterior SD": summary.loc[terms, "sd"],
        "SE from 24 pigeon means": [by_pigeon.bse["condition[T.trained]"], np.nan],
    })
    se["LMM / OLS"] = se["LMM posterior SD"] / se["OLS SE (240 rows)"]
    se
    """),
    code("""
    ax = se[["OLS SE (240 rows)", "LMM posterior SD"]].plot.bar(figsize=(6, 3.5), rot=0)
    ax.set(ylabel="standard error", title="OLS understates the between-pigeon SE, overstates the within")
    plt.show()
    """),
    md("""
    Two things happen at once:

    * For **condition** (between pigeons) the LMM's uncertainty is about three times the OLS
      standard error, and it agrees with the analysis of the 24 pigeon means: the information about
      training comes from 24 pigeons, not 240 rows.
    * For **session** (within pigeons) the LMM is *more* precise than OLS: each pigeon serves as its
      own control, so the large between-pigeon variation no longer counts as noise.

    The size of the first effect is predicted by the **design effect** `1 + (m - 1) * ICC`, where
    `m = 10` measurements per pigeon and ICC is the share of variance between pigeons: the
    variance of a between-unit estimate is inflated by this factor, its SE by its square root.
    """),
    code("""
    icc = fit.icc().table
    icc_median = float(icc.loc[icc["group"] == "pigeon", "median"].iloc[0])
    deff = 1 + (10 - 1) * icc_median
    ratio = se.loc["condition[T.trained]", "LMM / OLS"]
    print(f"ICC = {icc_median:.2f}; design effect = {deff:.1f}; sqrt = {np.sqrt(deff):.2f}; "
          f"observed SE ratio = {ratio:.2f}")

    # the teaching claims, checked
    b = "condition[T.trained]"
    assert summary.loc[b, "sd"] > 2 * ols.bse[b], "LMM SE of the between-pigeon effect must exceed OLS SE"
    assert 0.7 < summary.loc[b, "sd"] / by_pigeon.bse[b] < 1.4, "LMM should match the pigeon-means analysis"
    assert summary.loc["session", "sd"] < ols.bse["session"], "within-pigeon effect: LMM more precise"
    assert abs(ratio / np.sqrt(deff) - 1) < 0.3, "the design effect predicts the SE inflation"
    assert summary.loc[b, "hdi_lower"] < 6 < summary.loc[b, "hdi_upper"], "true effect 6 in the 95% HDI"
    """),
    md("""
    ## What goes wrong with the naive SE: false positives

    Suppose training had **no effect at all**. How often would each analysis declare a significant
    difference (p < 0.05)? We simulate 400 experiments with the same design and true trained effect
    0, and run the naive OLS test and the pigeon-means test on each (no sampling needed: this is
    about the OLS standard error).
    """),
    code("""
    from scipy import stats

    rng = np.random.default_rng(2026)
    n_pig, n_ses = 24, 10
    trained = np.repeat([0.0, 1.0], n_pig // 2)
    session = np.tile(np.arange(1, n_ses + 1), n_pig).astype(float)
    X = np.column_stack([np.ones(n_pig * n_ses), np.repeat(trained, n_ses), session])
    Xm = np.column_stack([np.ones(n_pig), trained])

    def t_pvalue(X, y):
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
        dof = len(y) - X.shape[1]
        s2 = np.sum((y - X @ beta) ** 2) / dof
        se_b = np.sqrt(s2 * np.linalg.inv(X.T @ X)[1, 1])
        return 2 * stats.t.sf(abs(beta[1] / se_b), dof)

    p_naive, p_means = [], []
    for _ in range(400):
        u = rng.normal(0, 6, n_pig)                       # pigeon effects, SD 6
        y = 40 + 1.5 * session + np.repeat(u, n_ses) + rng.normal(0, 3, n_pig * n_ses)
        p_naive.append(t_pvalue(X, y))
        p_means.append(t_pvalue(Xm, y.reshape(n_pig, n_ses).mean(axis=1)))
    false_pos = pd.Series({"naive OLS on 240 rows": np.mean(np.array(p_naive) < 0.05),
                           "OLS on 24 pigeon means": np.mean(np.array(p_means) < 0.05)})
    print(false_pos.to_string(float_format=lambda v: f"{v:.1%}"))
    assert false_pos["naive OLS on 240 rows"] > 0.25, "the naive test should reject far more than 5%"
    assert false_pos["OLS on 24 pigeon means"] < 0.10, "the honest test holds its 5% level"
    """),
    md("""
    With no true effect, the naive OLS test reports a "significant" training effect in a large
    fraction of experiments instead of 5%. Treating repeated measurements as independent
    manufactures certainty. The mixed model gets the between-pigeon uncertainty right *and* uses
    the within-pigeon information efficiently, in one model, with all 240 rows.

    **Take-away.** When units are measured repeatedly, the number of independent units, not the
    number of rows, limits what you can learn about effects that vary between units. Model the
    units (random effects) instead of pretending the rows are independent.
    """),
]

# -------------------------------------------------------------------------------------------------
NB2 = [
    md("""
    # 2. Fixed vs random effects: no, complete and partial pooling (radon)

    Radon is a radioactive gas that enters homes from the ground. The EPA measured it in 919 homes
    in the 85 counties of Minnesota (Gelman & Hill 2007). We want each county's typical log radon
    level. Some counties have over 100 measured homes, many have fewer than 5, two have only 1.

    Three ways to estimate a county's level (all adjusting for whether the measurement was taken
    in the basement, `floor_measure = 0`, or on the first floor, `1`):

    * **Complete pooling** ignores counties: one regression line for the whole state. Every county
      gets the state mean. Too simple: counties do differ.
    * **No pooling** gives every county its own intercept as a *fixed effect* (a dummy variable per
      county). Each county is estimated from its own homes only; a county with one home gets
      whatever that one home measured. Too noisy: small counties get extreme estimates.
    * **Partial pooling** treats the county intercepts as *random effects*: draws from a normal
      distribution with a mean and an SD `tau` that are estimated from all counties. Each county's
      estimate is a precision-weighted compromise between its own data and the state mean:

      `estimate_j ~ w_j * (own mean_j) + (1 - w_j) * (state mean)`, with
      `w_j = n_j tau^2 / (n_j tau^2 + sigma^2)`.

      Counties with many homes keep (almost) their own mean; counties with few homes are *shrunk*
      towards the state mean. This is what `(1 | county)` in a mixed model does.
    """),
    SETUP,
    code("""
    import statsmodels.formula.api as smf

    mf = blmm.load_model_file(ROOT / "models" / "radon_county_shrinkage.toml")
    df = mf.load_data()                      # county_idx is read as a label (see the model file)
    sizes = df.groupby("county_idx").size()
    print(f"{len(df)} homes in {len(sizes)} counties; homes per county: min {sizes.min()}, "
          f"median {sizes.median():.0f}, max {sizes.max()}")
    """),
    md("## Complete pooling and no pooling with OLS"),
    code("""
    complete = smf.ols("log_radon ~ floor_measure", data=df).fit()
    nopool = smf.ols("log_radon ~ 0 + C(county_idx) + floor_measure", data=df).fit()
    state_mean = complete.params["Intercept"]
    no_pool = pd.Series({c: nopool.params[f"C(county_idx)[{c}]"] for c in sizes.index}, name="no_pooling")
    print(f"complete pooling: every county = {state_mean:.3f} (basement)")
    print(f"no pooling: county intercepts from {no_pool.min():.2f} to {no_pool.max():.2f}")
    """),
    md("## Partial pooling: the mixed model"),
    FAST_NOTE,
    code("""
    model = mf.build_model()
    fit = model.fit(**FAST, seed=mf.sampler.seed, verbose=False)
    fit.variance_components()[["mean", "hdi_lower", "hdi_upper"]]
    """),
    code("""
    post = fit.posterior
    county_level = post["b"].sel(term="Intercept") + post["r_county_idx"].sel(county_idx__term="Intercept")
    partial = county_level.mean(("chain", "draw")).to_series()
    partial.index = partial.index.astype(str)
    mu = float(post["b"].sel(term="Intercept").mean())      # mean of the county distribution
    est = pd.DataFrame({"n": sizes, "no_pooling": no_pool, "partial_pooling": partial.reindex(sizes.index)})
    est["complete_pooling"] = state_mean
    est.sort_values("n").head(8)
    """),
    code("""
    fig, ax = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    jitter = np.exp(np.random.default_rng(0).uniform(-0.08, 0.08, len(est)))
    for a, col, title in ((ax[0], "no_pooling", "No pooling (fixed county effects)"),
                          (ax[1], "partial_pooling", "Partial pooling (random county effects)")):
        a.scatter(est["n"] * jitter, est[col], s=18)
        a.axhline(state_mean, color="k", ls="--", label="complete pooling")
        a.set(xscale="log", xlabel="homes measured in the county (log scale)", title=title)
    ax[1].axhline(mu, color="C3", ls=":", label="mu: mean of the county distribution")
    ax[0].set_ylabel("county intercept (log radon, basement)")
    ax[0].legend()
    ax[1].legend()
    plt.show()
    """),
    md("""
    On the left, the small counties (left side of each panel) scatter wildly: with one or two homes
    the no-pooling estimate is mostly noise. On the right, the same counties are pulled towards the
    state mean, while the large counties barely move. `fit.plot_shrinkage()` draws the same story
    as arrows from each county's own estimate to its partial-pooling estimate:
    """),
    code("""
    display(fit.plot_shrinkage())
    """),
    md("""
    ## How much does each county shrink?

    The shrinkage factor `1 - w_j = sigma^2 / (n_j tau^2 + sigma^2)` is 0 for no shrinkage (own data
    only) and 1 for complete pooling. `fit.shrinkage()` reports it per county as a posterior.
    Plugging posterior means of `tau` and `sigma` into the weighted-average formula reproduces the
    model's estimates closely.

    One subtlety: the estimates are shrunk towards `mu`, the mean of the *county distribution*,
    which is a little higher than the OLS complete-pooling intercept. Complete pooling weights every
    *home* equally, so the few large counties (with lower radon) dominate it; `mu` weights counties.
    """),
    code("""
    tau = float(post["sd_county_idx"].sel(county_idx__term="Intercept").mean())
    sigma = float(post["sigma"].mean())
    est["shrinkage"] = sigma**2 / (est["n"] * tau**2 + sigma**2)
    formula = mu + (1 - est["shrinkage"]) * (est["no_pooling"] - mu)
    print(f"tau = {tau:.3f}, sigma = {sigma:.3f}")
    print(f"shrinkage: {est['shrinkage'][est['n'] == 1].mean():.2f} for 1-home counties, "
          f"{est['shrinkage'][est['n'] >= 40].mean():.2f} for counties with 40+ homes")
    print(f"largest |formula - model| = {np.max(np.abs(formula - est['partial_pooling'])):.3f}")

    shr = fit.shrinkage().table
    shr = shr[shr["term"] == "Intercept"].set_index("level")
    shr[["n", "no_pooling", "partial_mean", "shrinkage"]].sort_values("n").head()
    """),
    code("""
    # shrinkage pulls towards mu, the estimated mean of the county distribution
    small = est["n"] <= 2
    dist_np = (est["no_pooling"] - mu).abs()
    dist_pp = (est["partial_pooling"] - mu).abs()

    # the teaching claims, checked
    assert est["partial_pooling"].std() < 0.75 * est["no_pooling"].std(), "partial pooling has less spread"
    assert dist_pp[small].mean() < 0.5 * dist_np[small].mean(), "small counties are pulled to the mean"
    assert (dist_pp[small] <= dist_np[small] + 1e-9).all(), "every small county moves towards the mean"
    big = est["n"] >= 40
    assert (est.loc[big, "partial_pooling"] - est.loc[big, "no_pooling"]).abs().max() < 0.1, \\
        "large counties keep (nearly) their own estimate"
    assert est["shrinkage"].corr(est["n"], method="spearman") < -0.95, "shrinkage falls with county size"
    assert np.max(np.abs(formula - est["partial_pooling"])) < 0.1, "precision-weighted average"
    model_shr = shr["shrinkage"].reindex(est.index)
    assert model_shr.corr(est["shrinkage"]) > 0.95, "fit.shrinkage() agrees with the formula"
    """),
    md("""
    ## Shrinkage against county size

    The counties differ in size (1 to over 100 homes), so they shrink by different amounts.
    `fit.plot_shrinkage_vs_size()` puts the three estimates side by side with the size (left) and
    the shrinkage itself (right): `shrinkage` is the fraction of the way from the county's own
    estimate (no pooling, 0) to the model's population value (complete pooling, 1). It falls
    steadily with size. (In a balanced design every group has the same size and the same
    shrinkage, and this plot would say nothing.)
    """),
    code("""
    display(fit.plot_shrinkage_vs_size())
    """),
    md("""
    ## Prior against posterior

    Where did the answer come from: the data or the prior? `fit.plot_prior_posterior()` overlays
    the prior (grey) and the posterior (colour) of every parameter. All of them here are far
    narrower than their priors: with 919 homes in 85 counties the data decide. (Compare the eight
    schools of notebook 6, where the between-school SD is as much prior as data.)
    """),
    code("""
    display(fit.plot_prior_posterior(draws=500))
    """),
    md("""
    ## Play with it: what makes a group shrink?

    For a random intercept the shrinkage of a group of `n` rows is

    `shrinkage = sigma^2 / (sigma^2 + n tau^2)`  (residual SD `sigma`, group SD `tau`),

    and the partial-pooling estimate is `shrinkage * (population mean) + (1 - shrinkage) * (group's
    own mean)`. The function below simulates 30 groups with the settings you choose and draws
    the arrows from each group's own mean (no pooling) to its partial-pooling estimate (with the
    true `tau` and `sigma`, so no fitting is needed). Drag the sliders (if `ipywidgets` is
    installed: `pip install ipywidgets`); the static figure below shows three settings.

    * a larger **group SD** means the groups really differ: less shrinkage;
    * a larger **residual SD** means each group's mean is noisier: more shrinkage;
    * a larger **group size** means each group's mean is more precise: less shrinkage.
    """),
    code("""
    def shrinkage_demo(group_sd=0.3, resid_sd=0.8, n=5, n_groups=30, seed=1, ax=None):
        \"\"\"Simulate n_groups groups of n rows; draw no pooling -> partial pooling arrows.\"\"\"
        rng = np.random.default_rng(seed)
        truth = rng.normal(0, group_sd, n_groups)
        own = truth + rng.normal(0, resid_sd / np.sqrt(n), n_groups)      # each group's own mean
        shrink = resid_sd**2 / (resid_sd**2 + n * group_sd**2)
        partial = shrink * own.mean() + (1 - shrink) * own
        if ax is None:
            ax = plt.subplots(figsize=(5, 3.2))[1]
        for k in range(n_groups):
            ax.annotate("", (partial[k], 0), (own[k], 1), arrowprops=dict(arrowstyle="->", alpha=0.6))
        ax.scatter(own, np.ones(n_groups), s=12, label="no pooling (own mean)")
        ax.scatter(partial, np.zeros(n_groups), s=12, color="C3", label="partial pooling")
        ax.axvline(own.mean(), color="k", ls="--", lw=1)
        ax.set(yticks=[], xlim=(-2, 2), title=f"sd {group_sd}, sigma {resid_sd}, n {n}: shrinkage {shrink:.2f}")
        return own, partial, shrink

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.2), sharex=True)
    for ax, n in zip(axes, (1, 5, 50)):
        shrinkage_demo(n=n, ax=ax)
    axes[0].legend(loc="lower left", fontsize=8)
    plt.show()

    try:                               # the interactive version, where ipywidgets is installed
        import ipywidgets as widgets
        widgets.interact(lambda group_sd, resid_sd, n: (shrinkage_demo(group_sd, resid_sd, n), plt.show()),
                         group_sd=widgets.FloatSlider(value=0.3, min=0.05, max=1.0, step=0.05),
                         resid_sd=widgets.FloatSlider(value=0.8, min=0.1, max=2.0, step=0.1),
                         n=widgets.IntSlider(value=5, min=1, max=100))
    except ImportError:
        print("(pip install ipywidgets for the sliders)")
    """),
    check("""
    # the demo's partial pooling lies between the two ends, and the model's shrinkage of a county
    # of n homes is the formula at the posterior's tau and sigma (a plug-in: close, not equal)
    own, partial, sh = shrinkage_demo(0.3, 0.8, 5)
    plt.close("all")
    assert np.allclose(partial - own.mean(), (1 - sh) * (own - own.mean()))
    assert 0 < sh < 1 and abs(sh - 0.8**2 / (0.8**2 + 5 * 0.3**2)) < 1e-12
    n_shr = shr.groupby("n")["shrinkage"].mean()
    assert (np.diff(n_shr.to_numpy()) < 0).all(), "bigger counties shrink less"
    assert np.max(np.abs(n_shr - sigma**2 / (sigma**2 + n_shr.index * tau**2))) < 0.05
    """),
    md("""
    ## Exercises

    1. A county with 4 homes: compute its shrinkage by hand from the posterior means of `tau` and
       `sigma` above, and compare it with the `shrinkage` column of `fit.shrinkage()` for a
       4-home county. Why are they close but not equal? (Hint: the model averages the formula
       over the posterior of `tau` and `sigma`.)
    2. With group SD 0.3 and residual SD 0.8, how many rows does a group need before it moves
       less than half way to the population mean (shrinkage below 0.5)? Check with
       `shrinkage_demo`.

    The solutions are in the hidden cells below (click to show them).
    """),
    solution("""
    # 1. plug-in formula against the model's posterior mean of the same formula
    by_hand = sigma**2 / (sigma**2 + 4 * tau**2)
    print(f"by hand {by_hand:.3f}; fit.shrinkage() {shr.loc[shr['n'] == 4, 'shrinkage'].iloc[0]:.3f}")
    # The model computes the formula draw by draw and averages; the average of a nonlinear function
    # is not the function of the averages (Jensen), so the two differ a little.
    """),
    solution("""
    # 2. shrinkage < 0.5  <=>  n tau^2 > sigma^2  <=>  n > (sigma / tau)^2 = (0.8 / 0.3)^2 = 7.1
    print(f"n > {(0.8 / 0.3) ** 2:.1f}: a group needs 8 rows")
    print([round(shrinkage_demo(0.3, 0.8, n)[2], 3) for n in (7, 8)])
    plt.close("all")
    """),
    md("""
    **Fixed or random?** Fixed county effects (no pooling) treat each county as unrelated to the
    others and need a lot of data in every county. Random effects say "counties are different, but
    they are all Minnesota counties" and let the data decide, through `tau`, how much the counties
    differ, and hence how much to borrow from the others. The partial-pooling estimates are more
    accurate on average (they trade a little bias for a lot less variance) and give a sensible
    answer even for a county with one home, or for a new county with none: the state mean, with
    uncertainty `tau`.
    """),
]

# -------------------------------------------------------------------------------------------------
NB3 = [
    md("""
    # 3. The intraclass correlation (ICC): schools and Dyestuff

    In a random-intercept model `y_ij = mu + u_j + e_ij` with `u_j ~ N(0, tau^2)` (between groups) and
    `e_ij ~ N(0, sigma^2)` (within groups), the **ICC** is

    `ICC = tau^2 / (tau^2 + sigma^2)`,

    the share of the total variance that lies between groups. It is also the **correlation between
    two observations from the same group**: they share `u_j`, so
    `cov(y_ij, y_kj) = tau^2` and `corr = tau^2 / (tau^2 + sigma^2)`.

    Our first example is simulated (`models/data/simulate.py`): 968 pupils in 40 schools, with a
    between-school variance of 0.35 and a pupil-level variance of 2.10, so the true ICC is
    `0.35 / (0.35 + 2.10) = 0.143`.
    """),
    SETUP,
    code("""
    mf = blmm.load_model_file(ROOT / "models" / "schools_icc.toml")
    schools = mf.load_data()
    TRUE_ICC = 0.35 / (0.35 + 2.10)
    print(f"{len(schools)} pupils in {schools['school'].nunique()} schools; true ICC = {TRUE_ICC:.3f}")
    """),
    FAST_NOTE,
    code("""
    fit = mf.build_model().fit(**FAST, seed=mf.sampler.seed, verbose=False)
    icc = fit.icc()
    icc.table
    """),
    code("""
    draws = icc.draws[("school", "all")]
    lo, hi = icc.table.loc[0, ["hdi_lower", "hdi_upper"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(draws, bins=40, density=True, alpha=0.7)
    ax.axvline(TRUE_ICC, color="k", ls="--", label=f"true ICC {TRUE_ICC:.3f}")
    ax.axvspan(lo, hi, color="C1", alpha=0.15, label="95% HDI")
    ax.set(xlabel="ICC (school)", ylabel="posterior density", title="Schools: posterior of the ICC")
    ax.legend()
    plt.show()
    assert lo < TRUE_ICC < hi, "the 95% HDI should cover the true ICC"
    assert abs(np.median(draws) - TRUE_ICC) < 0.05
    """),
    md("""
    ## What does an ICC of 0.14 mean?

    1. **14% of the variation in scores lies between schools**, 86% between pupils within a school.
       Knowing the school tells you something, but most of the variation is individual.
    2. **Two pupils from the same school have scores that correlate about 0.14.** We can check this
       directly on the data, without any model: take every pair of pupils in the same school and
       correlate their scores (deviations from the overall mean).
    """),
    code("""
    d = schools["score"] - schools["score"].mean()
    g = d.groupby(schools["school"])
    sum_d, sum_d2, n = g.sum(), (d**2).groupby(schools["school"]).sum(), g.size()
    # sum over ordered pairs i != j in the same school of d_i * d_j = (sum d)^2 - sum d^2
    pair_cov = ((sum_d**2 - sum_d2).sum()) / (n * (n - 1)).sum()
    pair_corr = pair_cov / d.var()
    print(f"correlation of same-school pairs: {pair_corr:.3f}; posterior median ICC: {np.median(draws):.3f}")
    assert abs(pair_corr - np.median(draws)) < 0.05, "the ICC is the within-school pair correlation"
    """),
    md("""
    3. **A small ICC can still matter a lot.** With `m` pupils per school, the variance of a school-
       level mean is inflated by the *design effect* `1 + (m - 1) * ICC`. Here `m` is about 24, so
       the design effect is about 4.4: the 968 pupils carry as much information about the average
       score as roughly 220 independent pupils. An OLS standard error of the mean, which assumes
       independence, is too small by a factor of about `sqrt(4.4) = 2.1`.
    """),
    code("""
    import statsmodels.formula.api as smf

    m_bar = schools.groupby("school").size().mean()
    deff = 1 + (m_bar - 1) * np.median(draws)
    ols_se = smf.ols("score ~ 1", data=schools).fit().bse["Intercept"]
    lmm_sd = fit.summary().loc["Intercept", "sd"]
    print(f"mean school size {m_bar:.1f}; design effect {deff:.2f}; effective n = {len(schools) / deff:.0f}")
    print(f"SE of the mean score: OLS {ols_se:.4f}, LMM {lmm_sd:.4f}, ratio {lmm_sd / ols_se:.2f} "
          f"(sqrt(deff) = {np.sqrt(deff):.2f})")
    assert lmm_sd > 1.5 * ols_se, "clustering inflates the SE of the mean"
    assert abs(lmm_sd / ols_se / np.sqrt(deff) - 1) < 0.35
    """),
    md("""
    What the ICC is **not**: it is not the share of pupils affected by their school, and not a
    measure of how much schools *cause* differences (selection of pupils into schools also creates
    between-school variance). It is a variance share, and a correlation.

    ## Dyestuff: an ICC from only six batches

    The Dyestuff data (Davies 1947) are the yields of 6 batches of an intermediate product, 5
    preparations each. How much of the yield variation is due to batches? With only 6 groups the
    between-batch variance is poorly determined, and a Bayesian posterior shows it honestly.
    """),
    code("""
    mf_dye = blmm.load_model_file(ROOT / "models" / "dyestuff_icc.toml")
    dye = mf_dye.load_data()
    fit_dye = mf_dye.build_model().fit(**FAST, seed=mf_dye.sampler.seed, target_accept=0.95, verbose=False)
    icc_dye = fit_dye.icc()
    icc_dye.table
    """),
    code("""
    import statsmodels.formula.api as smf

    reml = smf.mixedlm("Yield ~ 1", dye, groups=dye["Batch"]).fit(reml=True)
    reml_icc = float(reml.cov_re.iloc[0, 0]) / (float(reml.cov_re.iloc[0, 0]) + reml.scale)
    print(f"REML (lme4-style) point estimate of the ICC: {reml_icc:.3f}")

    dye_draws = icc_dye.draws[("Batch", "all")]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(draws, bins=40, density=True, alpha=0.6, label="schools (40 groups)")
    ax.hist(dye_draws, bins=40, density=True, alpha=0.6, label="Dyestuff (6 batches)")
    ax.axvline(reml_icc, color="C1", ls="--", label="Dyestuff REML estimate")
    ax.set(xlabel="ICC", ylabel="posterior density", title="Few groups, wide ICC posterior")
    ax.legend()
    plt.show()

    row = icc_dye.table.iloc[0]
    assert row["hdi_lower"] < reml_icc < row["hdi_upper"], "REML estimate inside the 95% HDI"
    assert row["hdi_upper"] - row["hdi_lower"] > 0.4, "six batches leave the ICC very uncertain"
    assert row["hdi_upper"] - row["hdi_lower"] > 3 * (hi - lo), "far wider than with 40 schools"
    """),
    md("""
    The REML point estimate (0.42, what `lmer` reports) hides how little six batches can tell us:
    the posterior gives a 95% interval of the ICC that spans most of the range, while 40 schools
    pin the schools ICC down to a few hundredths. When you report an ICC, report its uncertainty,
    and remember that it is governed by the number of **groups**, not the number of rows.
    """),
    md("""
    ## Exercises

    1. You plan a new study with classes of 25 pupils and expect the schools ICC above. Using the
       posterior draws of the ICC, what is the posterior median and 95% interval of the design
       effect `1 + (m - 1) ICC`, and how many independent pupils is a class of 25 worth?
    2. Why is the Dyestuff ICC interval so much wider than the schools one, although the Dyestuff
       ICC is larger? (Hint: count the groups.)

    The solutions are in the hidden cells below (click to show them).
    """),
    solution("""
    # 1. the design effect is a function of the ICC, so its posterior is the ICC's draws transformed
    deff25 = 1 + (25 - 1) * draws
    lo25, med25, hi25 = np.quantile(deff25, [0.025, 0.5, 0.975])
    print(f"design effect for classes of 25: {med25:.2f} (95% interval {lo25:.2f} to {hi25:.2f}); "
          f"a class of 25 is worth about {25 / med25:.1f} independent pupils")
    """),
    solution("""
    # 2. the ICC's precision is set by the number of groups (6 batches vs 40 schools), not by the rows
    print(f"schools: 40 groups, 95% interval width {hi - lo:.2f}; "
          f"Dyestuff: 6 groups, width {row['hdi_upper'] - row['hdi_lower']:.2f}")
    """),
]

# -------------------------------------------------------------------------------------------------
NB4 = [
    md("""
    # 4. Random slopes, and what repeated-measures ANOVA cannot do (sleepstudy)

    In the sleep deprivation study (Belenky et al. 2003) 18 subjects had their reaction time
    measured on each of 10 days (day 0 = baseline) of restricted sleep. The classical analysis is a
    **repeated-measures ANOVA** with `Days` as a 10-level within-subject factor. It tests one
    hypothesis: *are the 10 day means equal?*

    That F-test relies on **sphericity**: the variances of all pairwise differences between days
    must be equal. When they are not, the F-test is too liberal, and the textbook fix is to shrink
    its degrees of freedom by a factor epsilon (Greenhouse-Geisser or Huynh-Feldt). The correction
    patches the test; it does not explain *why* sphericity fails.

    A mixed model with **random slopes**, `Reaction ~ Days + (Days | Subject)`, gives every subject
    their own baseline *and* their own rate of slowing. That explains the violation: if subjects
    slow down at different rates, they fan out over the days, so the variance grows with `Days` and
    the day-to-day differences are not equally variable.
    """),
    SETUP,
    code("""
    from scipy import stats
    from statsmodels.stats.anova import AnovaRM

    df = blmm.load_dataset("sleepstudy")
    fig, ax = plt.subplots(figsize=(7, 4))
    for s, d in df.groupby("Subject"):
        ax.plot(d["Days"], d["Reaction"], marker=".", alpha=0.6)
    ax.set(xlabel="days of sleep deprivation", ylabel="reaction time (ms)", title="One line per subject")
    plt.show()
    """),
    md("## Repeated-measures ANOVA, with sphericity corrections"),
    code("""
    aov = AnovaRM(df, depvar="Reaction", subject="Subject", within=["Days"]).fit().anova_table
    F, df1, df2 = aov.loc["Days", ["F Value", "Num DF", "Den DF"]]

    wide = df.pivot(index="Subject", columns="Days", values="Reaction")
    n, k = wide.shape
    S = np.cov(wide.to_numpy(), rowvar=False)
    Sc = S - S.mean(axis=0)[None, :] - S.mean(axis=1)[:, None] + S.mean()   # double-centred
    eps_gg = np.trace(Sc) ** 2 / ((k - 1) * np.sum(Sc**2))                   # Greenhouse-Geisser
    eps_hf = min(1.0, (n * (k - 1) * eps_gg - 2) / ((k - 1) * (n - 1 - (k - 1) * eps_gg)))  # Huynh-Feldt
    rows = []
    for name, eps in (("uncorrected", 1.0), ("Greenhouse-Geisser", eps_gg), ("Huynh-Feldt", eps_hf),
                      ("lower bound", 1 / (k - 1))):
        rows.append({"correction": name, "epsilon": eps, "df1": eps * df1, "df2": eps * df2,
                     "p": stats.f.sf(F, eps * df1, eps * df2)})
    pd.DataFrame(rows).set_index("correction")
    """),
    code("""
    print(f"F = {F:.1f}; Greenhouse-Geisser epsilon = {eps_gg:.2f} (1 = sphericity holds, "
          f"{1 / (k - 1):.2f} = worst case)")
    assert eps_gg < 0.6, "sphericity is badly violated in sleepstudy"
    """),
    md("""
    Epsilon is far below 1: sphericity fails badly. The corrected test still says "the days
    differ", and that is all it can say.

    ## The random-slopes model
    """),
    FAST_NOTE,
    code("""
    mf = blmm.load_model_file(ROOT / "models" / "sleepstudy_slopes.toml")
    fit = mf.build_model().fit(**FAST, seed=mf.sampler.seed, verbose=False)
    cols = ["mean", "sd", "hdi_lower", "hdi_upper"]
    display(fit.summary()[cols])
    fit.variance_components()[cols]
    """),
    md("""
    ### Random slopes explain the sphericity violation

    Under the model, the variance of a reaction time on day `d` is

    `Var(y | d) = sd_0^2 + 2 cor sd_0 sd_1 d + sd_1^2 d^2 + sigma^2`,

    growing with `d` when subjects' slopes differ (`sd_1 > 0`). Compare it with the variance of the
    observed reaction times on each day:
    """),
    code("""
    post = fit.posterior
    sd0 = post["sd_Subject"].sel(Subject__term="Intercept").values.ravel()
    sd1 = post["sd_Subject"].sel(Subject__term="Days").values.ravel()
    rho = post["cor_Subject"].sel(Subject__term="Intercept", Subject__term2="Days").values.ravel()
    sig = post["sigma"].values.ravel()
    days = np.arange(10)
    implied = sd0[:, None] ** 2 + 2 * rho[:, None] * sd0[:, None] * sd1[:, None] * days + \\
        sd1[:, None] ** 2 * days**2 + sig[:, None] ** 2
    observed = df.groupby("Days")["Reaction"].var()

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.fill_between(days, *np.percentile(implied, [2.5, 97.5], axis=0), alpha=0.3, label="model, 95%")
    ax.plot(days, np.median(implied, axis=0), label="model (random slopes)")
    ax.plot(days, observed.to_numpy(), "o", color="k", label="observed variance per day")
    ax.set(xlabel="Days", ylabel="variance of reaction time (ms^2)", title="Subjects fan out over time")
    ax.legend()
    plt.show()

    ratio_obs = observed[9] / observed[0]
    ratio_model = np.median(implied[:, 9] / implied[:, 0])
    print(f"variance day 9 / day 0: observed {ratio_obs:.1f}, model {ratio_model:.1f}")
    assert ratio_obs > 2 and ratio_model > 2, "variance grows with Days"
    lo9, hi9 = np.percentile(implied[:, 9], [2.5, 97.5])
    assert lo9 < observed[9] < hi9, "the model reproduces the day-9 variance"
    """),
    md("""
    ### What the mixed model tells you that the ANOVA cannot

    * **A rate with an interval.** The average slowing is about 10 ms per day of sleep deprivation
      (the `Days` fixed effect), not just "the days differ".
    * **How much people differ.** `sd(Subject, Days)` is about 6 ms/day: a typical subject slows by
      10 +/- 6 ms per day. Individual differences in the *rate* are real (the interval is far from 0).
    * **Each person's trajectory**, partially pooled: below, the subject-specific slopes. Nearly every
      subject slows down, at very different rates.
    * **Unbalanced and missing data.** RM-ANOVA needs every subject on every day; the mixed model
      uses whatever observations there are.
    * **Prediction** for a new subject (with the uncertainty of a new person's slope).

    The shrinkage plot shows each subject's own least-squares line (intercept, slope) and where the
    model puts it: extreme subjects, in both intercept and slope, are pulled towards the average.
    """),
    code("""
    display(fit.plot_shrinkage())
    """),
    code("""
    slopes = (post["b"].sel(term="Days") + post["r_Subject"].sel(Subject__term="Days"))
    slope_tab = pd.DataFrame({
        "slope (ms/day)": slopes.mean(("chain", "draw")).to_series(),
        "P(slope > 0)": (slopes > 0).mean(("chain", "draw")).to_series(),
    }).sort_values("slope (ms/day)")
    fig, ax = plt.subplots(figsize=(6, 4))
    q = slopes.quantile([0.025, 0.975], dim=("chain", "draw")).to_pandas().T.loc[slope_tab.index]
    ax.errorbar(slope_tab["slope (ms/day)"], range(len(slope_tab)),
                xerr=[slope_tab["slope (ms/day)"] - q[0.025], q[0.975] - slope_tab["slope (ms/day)"]], fmt="o")
    ax.axvline(0, color="k", lw=0.8)
    ax.set(yticks=range(len(slope_tab)), yticklabels=slope_tab.index, xlabel="slope (ms/day), 95% interval",
           ylabel="subject", title="Each subject's rate of slowing")
    plt.show()

    sd_days = fit.variance_components().loc["sd(Subject, Days)"]
    print(f"sd(Subject, Days): {sd_days['mean']:.1f} [{sd_days['hdi_lower']:.1f}, {sd_days['hdi_upper']:.1f}]")
    assert sd_days["hdi_lower"] > 2, "subjects clearly differ in their slopes"
    assert (slope_tab["P(slope > 0)"] > 0.95).sum() >= 12, "most subjects clearly slow down"
    assert slope_tab["slope (ms/day)"].max() - slope_tab["slope (ms/day)"].min() > 15, "rates differ widely"
    """),
    code("""
    # RM-ANOVA cannot use incomplete data: remove 10 random observations
    holes = df.drop(df.sample(10, random_state=1).index)
    try:
        AnovaRM(holes, depvar="Reaction", subject="Subject", within=["Days"]).fit()
        anova_ok = True
    except ValueError as e:
        anova_ok = False
        print("AnovaRM:", e)
    assert not anova_ok, "RM-ANOVA refuses unbalanced data"
    m_holes = blmm.Model("Reaction ~ Days + (Days | Subject)", holes)
    print(f"the mixed model uses all {m_holes.design.n} remaining observations of "
          f"{m_holes.design.factors[0].n_levels} subjects")
    """),
    md("""
    **Take-away.** Sphericity corrections rescue the p-value of an F-test when the repeated measures
    have unequal variances. A random-slopes model instead *describes* where those unequal
    variances come from (people change at different rates), estimates the average rate and the
    spread of rates, and gives every subject's trajectory.
    """),
]

# -------------------------------------------------------------------------------------------------
NB5 = [
    md("""
    # 5. Model comparison with LOO: random intercept vs random slopes

    Do we need random slopes for sleepstudy, or is a random intercept enough? Both models are in
    `models/`: `sleepstudy_intercept.toml` (`(1 | Subject)`: one shared slope) and
    `sleepstudy_slopes.toml` (`(Days | Subject)`: a slope per subject).

    We compare them by how well they **predict data they have not seen**. The expected log
    predictive density (ELPD) sums, over observations, the log density the model assigns to each
    observation when fitted *without* it. Refitting 180 times would be slow; **PSIS-LOO**
    (Vehtari, Gelman & Gabry 2017) approximates leave-one-out from a single fit by importance
    sampling, and its Pareto k values flag the observations where the approximation is unreliable
    (k > 0.7).

    Here LOO leaves out one *observation* and keeps its subject's effect (conditional LOO): it asks
    "how well does the model predict another day of a known subject?". Higher ELPD is better; the
    difference between two models comes with a standard error.
    """),
    SETUP,
    code("""

    fits = {}
    for name in ("sleepstudy_intercept", "sleepstudy_slopes"):
        mf = blmm.load_model_file(ROOT / "models" / f"{name}.toml")
        fits[name.split("_")[1]] = mf.build_model().fit(**FAST, seed=mf.sampler.seed, verbose=False)
    loos = {k: f.loo() for k, f in fits.items()}
    for k, l in loos.items():
        print(f"{k:9s}  elpd_loo = {l.elpd:8.1f} (SE {l.se:.1f}),  p_loo = {l.p:5.1f}")
    """),
    code("""
    cmp = blmm.compare(fits, round_to="none")      # raw numbers (ArviZ rounds the table by default)
    cmp
    """),
    code("""
    fig, ax = plt.subplots(figsize=(6, 2.5))
    names = list(cmp.index)
    ax.errorbar(cmp["elpd"], range(len(names)), xerr=cmp["se"], fmt="o", label="ELPD +/- SE")
    ax.set(yticks=range(len(names)), yticklabels=names, xlabel="ELPD (LOO), higher is better",
           title="Random slopes predict better")
    plt.show()
    """),
    md("""
    `p_loo` is the *effective number of parameters*: about 20 for the intercept model (2 fixed
    effects, sigma, and 18 partially pooled intercepts count as fewer than 18) and more for the
    slopes model, which also has 18 partially pooled slopes. The slopes model is more complex, and
    LOO says the complexity pays: its ELPD is higher by about 20-25, roughly twice the standard
    error of the difference (`dse`, computed from the pointwise differences, which is smaller than
    the SEs of the two ELPDs because the models make similar errors on the same observations).
    `p_worse` is the probability that the intercept model predicts worse.
    """),
    code("""
    best = cmp.index[0]
    diff = abs(cmp.loc["intercept", "elpd_diff"])
    dse = cmp.loc["intercept", "dse"]
    print(f"best: {best}; ELPD difference {diff:.1f} (SE {dse:.1f}); "
          f"P(intercept model worse) = {cmp.loc['intercept', 'p_worse']:.2f}")
    assert best == "slopes", "random slopes should predict better"
    assert diff > 4 and diff > 1.5 * dse, "and clearly so"
    assert cmp.loc["intercept", "p_worse"] > 0.9
    assert loos["slopes"].p > loos["intercept"].p, "the slopes model has more effective parameters"
    """),
    md("""
    ### Which subjects drive the difference?

    The ELPD difference is a sum over observations, so we can see where it comes from: add up the
    pointwise differences per subject. Subjects whose own slope is far from the average slope are
    the ones a common slope predicts badly.
    """),
    code("""
    df = fits["slopes"].design.data_frame()
    pw = pd.DataFrame({k: np.asarray(l.elpd_i).ravel() for k, l in loos.items()})
    pw["Subject"] = df["Subject"].astype(str).to_numpy()
    gain = (pw["slopes"] - pw["intercept"]).groupby(pw["Subject"]).sum()
    post = fits["slopes"].posterior
    own = (post["r_Subject"].sel(Subject__term="Days")).mean(("chain", "draw")).to_series().abs()
    own.index = own.index.astype(str)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter(own.reindex(gain.index), gain)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="|subject slope - average slope| (ms/day)", ylabel="ELPD gain of random slopes",
           title="The gain comes from subjects with unusual slopes")
    plt.show()
    rho = gain.corr(own.reindex(gain.index), method="spearman")
    print(f"Spearman correlation of the gain with |slope deviation|: {rho:.2f}")
    assert rho > 0.4, "subjects with unusual slopes gain most"
    """),
    code("""
    ks = pd.DataFrame({k: np.asarray(l.pareto_k).ravel() for k, l in loos.items()})
    print("observations with Pareto k > 0.7:", (ks > 0.7).sum().to_dict())
    assert (ks <= 0.7).mean().min() > 0.9, "PSIS-LOO is reliable for the large majority of observations"
    """),
    md("""
    A few observations have high Pareto k: these are the influential points (a subject's outlying
    day) for which the importance-sampling shortcut is rough. With many of them, refit those
    observations exactly (k-fold or exact LOO). Here they are few and the difference between the
    models is many standard errors, so the conclusion stands: **the random slopes are worth it.**
    """),
]

# -------------------------------------------------------------------------------------------------
GLMM_FAST = code("""
    # 2 chains x 300 draws, sequential, keep this notebook fast enough for the test suite; for a real
    # analysis use the defaults (4 chains x 1000 draws) and look at fit.diagnostics().
    FAST = dict(chains=2, draws=300, tune=300, cores=1, progressbar=False)
""")

NB7 = [
    md("""
    # 7. Conditional vs population-averaged effects in a logistic mixed model

    Forty participants each answer 15 trials of a task; `x` is the (standardised) difficulty
    cue of a trial and `correct` is 1 when the answer is right. People differ a lot in ability:
    a random intercept per participant with SD 2 on the logit scale. The data are simulated, so we
    know the truth: intercept -0.3, slope **1.0 per unit of x, for a given participant**.

    In a *linear* mixed model the coefficient of `x` means two things at once: the change in the
    mean of one participant, and the change in the mean of the population. With a **non-linear
    link** (logit) these are different quantities:

    * the **conditional** (subject-specific) effect: how the log-odds of *one participant*
      change with `x` (their random effect held fixed). This is the GLMM coefficient.
    * the **population-averaged** (marginal) effect: how the *proportion correct in the
      population* changes with `x`, averaging the curves of all participants. It is what a
      logistic regression that ignores participants, or a GEE, estimates.

    Averaging S-shaped curves that are shifted left and right gives a flatter S. For a random
    intercept with SD `sd`, the population-averaged logit slope is about
    `b / sqrt(1 + 0.346 sd^2)` (Zeger, Liang & Albert 1988; 0.346 = (16 sqrt(3) / (15 pi))^2).
    With `sd = 2` that is a factor of about 0.65.
    """),
    SETUP,
    GLMM_FAST,
    code("""
    rng = np.random.default_rng(2026)
    J, n_j = 40, 15
    pid = np.repeat(np.arange(J), n_j)
    x = rng.uniform(-2.5, 2.5, J * n_j)
    ability = rng.normal(0, 2.0, J)
    eta = -0.3 + 1.0 * x + ability[pid]
    df = pd.DataFrame({"correct": (rng.random(J * n_j) < 1 / (1 + np.exp(-eta))).astype(int),
                       "x": x, "participant": [f"p{k:02d}" for k in pid]})
    df.groupby("participant")["correct"].mean().describe()[["min", "25%", "50%", "75%", "max"]]
    """),
    md("""
    Proportions correct range from almost 0 to almost 1 across participants: large between-person
    variation. Fit the logistic mixed model:
    """),
    code("""
    fit = blmm.Model("correct ~ x + (1 | participant)", df, family="bernoulli").fit(**FAST, seed=7, verbose=False)
    summary = fit.summary()
    vc = fit.variance_components()
    display(summary[["mean", "sd", "hdi_lower", "hdi_upper", "r_hat"]])
    vc.loc[["sd(participant, Intercept)"], ["mean", "hdi_lower", "hdi_upper"]]
    """),
    code("""
    s = summary.loc["x"]
    assert s["hdi_lower"] <= 1.0 <= s["hdi_upper"], "the GLMM slope estimates the conditional slope, 1.0"
    """),
    md("""
    The GLMM recovers the **conditional** slope (1.0). Now integrate the participants out:
    `fit.marginal_effects("x")` takes every posterior draw, draws 200 participant effects from
    N(0, sd^2) of that draw, averages `inverse_logit(eta + u)` over them, and repeats on a grid
    of `x`. The conditional curve is the same with `u = 0` (a participant of median ability).
    """),
    code("""
    me = fit.marginal_effects("x", n_mc=200)
    pred = me.predictions
    pred[pred[me.variable].between(-0.3, 0.3)].round(3)
    """),
    code("""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    me.plot(ax=axes[0])
    me.plot(ax=axes[1], scale="link")
    axes[1].set_title("The same on the logit scale")
    plt.show()
    """),
    md("""
    Grey: the fitted curves of 30 participants. Dashed: the participant with random effect 0.
    Orange: the **population average** of the curves, flatter than any single participant's.
    On the logit scale (right) every participant's curve is a line with slope `b`, but the logit
    of their average is a flatter line: its slope is the population-averaged coefficient.

    ## The attenuation formula

    `me.coefficients()` gives, per posterior draw, the least-squares slope over the grid of the
    logit of each curve, and their ratio. Compare with `1 / sqrt(1 + 0.346 sd^2)` computed from
    the posterior draws of `sd`:
    """),
    code("""
    from bayeslmm.effects import logit_attenuation

    coef = me.coefficients()
    formula = logit_attenuation(fit.draws("sd(participant, Intercept)"))
    print(coef.round(3))
    print(f"formula 1/sqrt(1 + 0.346 sd^2): {formula.mean():.3f} "
          f"(95% interval {np.quantile(formula, 0.025):.3f} to {np.quantile(formula, 0.975):.3f})")
    ratio = coef.loc["ratio", "mean"]
    sd_grid = np.linspace(0, 4, 100)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(sd_grid, logit_attenuation(sd_grid), color="k", label="1 / sqrt(1 + 0.346 sd^2)")
    ax.errorbar(fit.draws("sd(participant, Intercept)").mean(), ratio,
                yerr=[[ratio - coef.loc["ratio", "hdi_lower"]], [coef.loc["ratio", "hdi_upper"] - ratio]],
                xerr=vc.loc["sd(participant, Intercept)", "sd"], fmt="o", color="C1",
                label="this fit (posterior mean, 95% HDI)")
    ax.set(xlabel="SD of the random intercept (logit scale)", ylim=(0, 1.05),
           ylabel="population-averaged / conditional slope")
    ax.legend(fontsize=8)
    plt.show()
    # the formula is an approximation: within ~4% for sd <= 2 (quadrature; tests/test_effects.py)
    assert abs(ratio / formula.mean() - 1) < 0.08
    # attenuation: the ratio is computed draw by draw, so its HDI is far narrower than the two
    # coefficients' (whose 95% HDIs may touch with 40 participants)
    assert coef.loc["ratio", "hdi_upper"] < 0.9
    """),
    md("""
    ## What a marginal model estimates

    A GEE (generalised estimating equations, exchangeable working correlation) or a plain logistic
    regression estimates the population-averaged slope directly. It agrees with the GLMM's
    population-averaged coefficient, not with the GLMM's coefficient:
    """),
    code("""
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    gee = smf.gee("correct ~ x", groups="participant", data=df, family=sm.families.Binomial(),
                  cov_struct=sm.cov_struct.Exchangeable()).fit()
    pa = coef.loc["population_averaged"]
    print(f"GEE slope {gee.params['x']:.3f} (SE {gee.bse['x']:.3f}); GLMM population-averaged "
          f"{pa['mean']:.3f} (sd {pa['sd']:.3f}); GLMM conditional {summary.loc['x', 'mean']:.3f}")
    assert abs(gee.params["x"] - pa["mean"]) < 2 * np.hypot(gee.bse["x"], pa["sd"])
    assert gee.params["x"] < summary.loc["x", "hdi_lower"]
    """),
    md("""
    **Which one to report?** Both are correct answers to different questions.

    * *"How much do the odds of a correct answer change with x for a given person?"* The
      conditional effect (the GLMM coefficient). Use it to reason about individuals, or about
      a change applied within a person.
    * *"How much does the proportion correct in the population change with x?"* The
      population-averaged effect (`fit.marginal_effects`). Use it for public-health style
      statements about a population.

    The gap between them grows with the between-person SD and vanishes for the identity link:
    in a linear mixed model the two coincide exactly (`marginal_effects` returns identical
    curves). The same integration works for probit and log links and for random slopes (the
    group-effect draws come from the full covariance of each posterior draw).
    """),
]

NB8 = [
    md("""
    # 8. Outliers: Gaussian vs Student-t vs rank-based inverse normal transform

    A few gross errors in a response (a data-entry slip, a broken sensor) can pull a Gaussian
    model far away, because the normal likelihood punishes a large residual quadratically: the
    fit moves the line towards the outliers and inflates sigma. Two common remedies:

    * **model** the heavy tails: `family="student_t"`, whose degrees of freedom `nu` are
      estimated; small `nu` lets a few observations sit far out without moving the fit;
    * **transform** the response: the rank-based inverse normal transform (rank-INT,
      `blmm.rank_inverse_normal`) replaces `y` by normal scores of its ranks.

    The data: 20 classes x 12 pupils, `y = 1 + 0.5 x + class effect + N(0, 0.5^2)`, and then
    5% of the rows (the 12 with the largest `x`) get `+6` (12 residual SDs): outliers that are
    also high-leverage points, the worst case for a slope.
    """),
    SETUP,
    GLMM_FAST,
    code("""
    rng = np.random.default_rng(31)
    J, n_j = 20, 12
    cls = np.repeat(np.arange(J), n_j)
    x = rng.normal(size=J * n_j)
    u = rng.normal(0, 0.6, J)
    u -= u.mean()                                   # so the realised intercept is exactly 1
    y = 1.0 + 0.5 * x + u[cls] + rng.normal(0, 0.5, J * n_j)
    bad = np.argsort(x)[-int(0.05 * len(x)):]
    y[bad] += 6.0
    df = pd.DataFrame({"y": y, "x": x, "school_class": [f"c{k:02d}" for k in cls],
                       "outlier": np.isin(np.arange(len(x)), bad)})
    df["y_int"] = blmm.rank_inverse_normal(df["y"])
    df.head()
    """),
    code("""
    gauss = blmm.Model("y ~ x + (1 | school_class)", df).fit(**FAST, seed=3, verbose=False)
    robust = blmm.Model("y ~ x + (1 | school_class)", df, family="student_t").fit(**FAST, seed=3, verbose=False)
    rint = blmm.Model("y_int ~ x + (1 | school_class)", df).fit(**FAST, seed=3, verbose=False)
    cols = ["mean", "sd", "hdi_lower", "hdi_upper"]
    table = pd.concat({"Gaussian": gauss.summary()[cols], "Student-t": robust.summary()[cols],
                       "rank-INT (normal scores)": rint.summary()[cols]})
    table
    """),
    code("""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    ax.scatter(df.x[~df.outlier], df.y[~df.outlier], s=8, color="grey", label="data")
    ax.scatter(df.x[df.outlier], df.y[df.outlier], s=20, color="red", label="outliers (+6)")
    grid = np.linspace(df.x.min(), df.x.max(), 50)
    for name, f, c in (("Gaussian", gauss, "C0"), ("Student-t", robust, "C1")):
        b = f.summary()["mean"]
        ax.plot(grid, b["Intercept"] + b["x"] * grid, color=c, lw=2, label=name)
    ax.plot(grid, 1 + 0.5 * grid, "k--", label="truth")
    ax.set(xlabel="x", ylabel="y", title="Population lines")
    ax.legend(fontsize=8)
    ax = axes[1]
    for name, f, c in (("Gaussian", gauss, "C0"), ("Student-t", robust, "C1")):
        ax.hist(f.draws("x"), bins=40, alpha=0.6, color=c, label=name, density=True)
    ax.axvline(0.5, color="k", ls="--", label="truth 0.5")
    ax.set(xlabel="slope of x", title="Posterior of the slope")
    ax.legend(fontsize=8)
    plt.show()
    """),
    code("""
    g, t = gauss.summary().loc["x"], robust.summary().loc["x"]
    assert not g["hdi_lower"] <= 0.5 <= g["hdi_upper"], "the Gaussian slope is pulled by the outliers"
    assert t["hdi_lower"] <= 0.5 <= t["hdi_upper"], "the Student-t slope keeps the truth"
    ti = robust.summary().loc["Intercept"]
    assert ti["hdi_lower"] <= 1.0 <= ti["hdi_upper"]
    """),
    md("""
    The Gaussian slope is more than twice the truth and its interval excludes it; the Student-t
    model keeps the truth inside its interval. The Student-t model also *tells* us the tails are
    heavy: `nu` is small (a normal distribution is `nu` -> infinity; below ~4 the tails are
    very heavy). Its `sigma` is the scale of the typical residual, close to the true 0.5, while
    the Gaussian sigma is inflated by the outliers:
    """),
    code("""
    comp = pd.concat({"Gaussian": gauss.variance_components()[cols],
                      "Student-t": robust.variance_components()[cols]})
    display(comp)
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(robust.draws("nu"), bins=40, color="C1")
    ax.set(xlabel="nu (degrees of freedom of the Student-t)", title="Posterior of nu: heavy tails")
    plt.show()
    nu = robust.variance_components().loc["nu"]
    assert nu["hdi_upper"] < 4, "the t model detects heavy tails"
    assert robust.variance_components().loc["sigma", "mean"] < 0.7 < gauss.variance_components().loc["sigma", "mean"]
    """),
    md("""
    ## The rank-based inverse normal transform: robust, but a different question

    The rank-INT model is not pulled by the outliers either (ranks cap every value), and the
    evidence that `x` matters is clear. But look at its numbers: the "slope" 0.7 and the
    intercept near 0 are on the **normal-scores scale**. They are not in the units of `y`, do
    not transform back, and are not an estimate of 0.5:
    """),
    code("""
    r = rint.summary().loc["x"]
    print(f"rank-INT slope {r['mean']:.3f} ({r['hdi_lower']:.3f} to {r['hdi_upper']:.3f}) normal scores per unit x")
    assert r["hdi_lower"] > 0, "the direction of the effect survives"
    assert not r["hdi_lower"] <= 0.5 <= r["hdi_upper"], "but the number is not the slope in units of y"
    """),
    md("""
    Caveats of rank-INT (see `help(blmm.rank_inverse_normal)`):

    * it **changes the estimand**: effects and variance components are on the normal-scores
      scale; a linear effect on `y` need not be linear on the scores, and interactions or random
      slopes can appear or vanish;
    * it is **marginal**: all rows are ranked together, ignoring classes and covariates, so the
      residuals of the mixed model fitted to the scores are not normal either;
    * it can inflate the type I error of tests of interactions and variance components (Beasley,
      Erickson & Allison 2009).

    When the units matter (a slope in points per unit, a variance component in `y`'s units, an
    ICC), model the tails instead: `family="student_t"` answers the original question and reports
    how heavy the tails are.
    """),
]

NB6 = [
    md("""
    # 6. Meta-analysis: the eight schools

    Eight high schools ran randomised experiments on a coaching programme for the SAT verbal test
    (Rubin 1981; Gelman et al., *Bayesian Data Analysis*, section 5.5). Each school reports an
    **estimated effect** `y` (points) and its **standard error** `s`; the raw data are gone. This is
    the shape of every meta-analysis: J studies, an estimate and a known standard error each.

    The model (brms writes it the same way):

        y_j ~ N(theta_j, s_j^2),  theta_j = mu + r_j,  r_j ~ N(0, tau^2)

    `y | se(s) ~ 1 + (1 | school)`: the standard errors are *known*, so no residual SD is
    estimated; `mu` is the average effect and `tau` the between-school SD. We use the priors of the
    classic analysis: mu ~ normal(0, 5), tau ~ halfcauchy(5).
    """),
    SETUP,
    code("""
        from scipy import stats
        from bayeslmm.families import typical_variance
        from bayeslmm.validation.meta import exact_meta_posterior

        schools = blmm.load_dataset("eight_schools")
        y, s = schools["y"].to_numpy(float), schools["s"].to_numpy(float)
        schools
    """),
    md("""
    ## No pooling and complete pooling

    *No pooling*: each school on its own, theta_j = y_j +- 1.96 s_j. The intervals are wide and
    overlap heavily. *Complete pooling*: one common effect, the precision-weighted mean
    sum(w_j y_j) / sum(w_j) with w_j = 1/s_j^2, and standard error 1/sqrt(sum w_j). A chi-square
    test of homogeneity (Cochran's Q) finds no evidence that the schools differ, yet it would be
    odd to believe that all eight effects are exactly equal.
    """),
    code("""
        w = 1 / s**2
        pooled, pooled_se = (w * y).sum() / w.sum(), 1 / np.sqrt(w.sum())
        Q = (w * (y - pooled) ** 2).sum()
        print(f"complete pooling: {pooled:.2f} +- {1.96 * pooled_se:.2f};  Cochran's Q = {Q:.2f} on 7 df, "
              f"p = {stats.chi2.sf(Q, 7):.2f}")
        assert abs(pooled - 7.69) < 0.01 and stats.chi2.sf(Q, 7) > 0.5
    """),
    md("""
    ## Partial pooling

    The hierarchical model estimates `tau` from the data and pulls each school toward `mu` by
    its own amount. bayeslmm fits it on the **collapsed** path: with a Gaussian likelihood and known
    s_j each school's effect integrates out exactly, y_j ~ N(mu, tau^2 + s_j^2), so NUTS samples
    only (mu, tau); the school effects are then drawn exactly from their conditional posterior.
    """),
    code("""
        PRIORS = {"Intercept": "normal(0, 5)", "sd": "halfcauchy(5)"}
        model = blmm.Model("y | se(s) ~ 1 + (1 | school)", schools, priors=PRIORS)
        print(model.plan().reason)
        fit = model.fit(seed=20, **FAST)
        fit.variance_components()[["mean", "sd", "hdi_lower", "hdi_upper"]]
    """),
    md("""
    The shrinkage plot draws an arrow from each school's own estimate (no pooling) to its
    partial-pooling posterior mean. The model's shrinkage factor of school j is the weight of the
    pooled mean in its conditional mean, s_j^2 / (s_j^2 + tau^2) (averaged over the posterior):
    the noisier the school, the more it borrows. **I^2** (Higgins & Thompson 2002) is the share of
    the variance of a typical school's estimate that lies between schools:
    I^2 = tau^2 / (tau^2 + s_typ^2) with the typical within-study variance
    s_typ^2 = (k - 1) sum w_j / ((sum w_j)^2 - sum w_j^2).
    """),
    code("""
        sh = fit.shrinkage().table
        print(sh[["level", "no_pooling", "partial_mean", "shrinkage"]].round(2).to_string(index=False))
        between = ((sh.partial_mean - sh.complete_pooling) * (sh.no_pooling - sh.complete_pooling) > 0) & (
            (sh.partial_mean - sh.complete_pooling).abs() < (sh.no_pooling - sh.complete_pooling).abs())
        assert between.all()                 # every school moves from its own estimate toward mu
        assert sh.shrinkage.idxmax() == int(np.argmax(s))   # the noisiest school shrinks most
        print(fit.icc())
        print(f"s_typ = {np.sqrt(typical_variance(s)):.2f}")
        fit.plot_shrinkage();
    """),
    md("""
    **Is it right?** For this model p(mu, tau | y) is known in closed form up to a constant, so a
    two-dimensional numerical integration gives the exact posterior. The fit agrees within Monte
    Carlo error (4 MCSE here; tests/test_meta.py checks means, SDs and quantiles of mu, tau and all
    eight school effects).
    """),
    code("""
        import arviz as az
        exact = exact_meta_posterior(y, s, mu_sd=5, tau_prior="halfcauchy", tau_scale=5)
        tau_hc = fit.posterior["sd_school"].isel(school__term=0).transpose("chain", "draw").to_numpy()
        mu_draws = fit.posterior["b"].sel(term="Intercept").transpose("chain", "draw").to_numpy()
        for name, d in (("mu", mu_draws), ("tau", tau_hc)):
            mcse = float(az.mcse(d, method="mean"))
            print(f"{name}: posterior mean {d.mean():.2f} (MCSE {mcse:.2f}), exact {exact[name][0]:.2f}")
            assert abs(d.mean() - exact[name][0]) < 4 * mcse
    """),
    md("""
    ## The funnel, and why the collapsed path has none

    Given tau, the school effects r_j have SD tau: when tau is small they are squeezed toward 0,
    when it is large they spread out. The joint posterior of (r_j, log tau) is a **funnel**. A
    sampler that moves through r_j directly must take tiny steps in the neck and large ones in the
    mouth; the non-centred parameterisation (r_j = tau z_j, sampling z_j) is the usual cure, but
    NUTS still explores a 10-dimensional space whose curvature changes with tau. On the collapsed
    path NUTS never sees r_j at all: it samples the two-dimensional, smooth p(mu, tau | y), and the
    r_j are drawn exactly afterwards. Same posterior, divergence counts side by side:
    """),
    code("""
        nc = model.fit(seed=20, method="noncentred", **FAST)
        div = {name: int(f.idata["sample_stats"]["diverging"].sum()) for name, f in
               (("collapsed", fit), ("non-centred", nc))}
        steps = {name: float(f.idata["sample_stats"]["n_steps"].mean()) for name, f in
                 (("collapsed", fit), ("non-centred", nc))}
        print("divergent transitions:", div, " mean leapfrog steps per draw:",
              {k: round(v, 1) for k, v in steps.items()})
        assert div["collapsed"] == 0
        assert steps["collapsed"] < steps["non-centred"]   # the 2-D posterior is the easier one
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for ax, (name, f) in zip(axes, (("collapsed", fit), ("non-centred", nc))):
            r = f.posterior["r_school"].sel(school__level="A", school__term="Intercept").to_numpy().ravel()
            t = f.posterior["sd_school"].isel(school__term=0).to_numpy().ravel()
            d = f.idata["sample_stats"]["diverging"].to_numpy().ravel()
            ax.scatter(r, np.log(t), s=4, alpha=0.4)
            ax.scatter(r[d], np.log(t[d]), s=12, color="red", label="divergent")
            ax.set_xlabel("r_A (school A's deviation)"); ax.set_title(f"{name}: {div[name]} divergences")
        axes[0].set_ylabel("log tau"); axes[1].legend(); plt.tight_layout()
    """),
    md("""
    Both panels show the same funnel-shaped *posterior*; what differs is what the sampler had to
    move through. With the default `target_accept=0.9` the non-centred sampler usually copes with
    these data (few or no divergences; the centred parameterisation, which bayeslmm does not use,
    diverges badly), but it needs more leapfrog steps per draw; the collapsed path is exact, cheaper
    per draw, and has no funnel left to diverge on.

    ## Prior sensitivity of tau

    With eight schools the data say little about tau, so its prior matters. Compare the
    half-Cauchy(5) with a half-normal(5), whose tail is much lighter. Only the prior of tau changes,
    so the half-Cauchy draws can be **reweighted** by p_halfnormal(tau) / p_halfcauchy(tau)
    (importance sampling) instead of refitting; the exact integration checks it.
    """),
    code("""
        exact_hn = exact_meta_posterior(y, s, mu_sd=5, tau_prior="halfnormal", tau_scale=5)
        t = tau_hc.ravel()
        wts = stats.halfnorm.pdf(t, scale=5) / stats.halfcauchy.pdf(t, scale=5)
        wts /= wts.sum()
        mean_hn = float((wts * t).sum())
        print(f"E[tau | y]: half-Cauchy(5) {t.mean():.2f} (exact {exact['tau'][0]:.2f}); "
              f"half-normal(5) {mean_hn:.2f} by reweighting (exact {exact_hn['tau'][0]:.2f})")
        assert abs(mean_hn - exact_hn["tau"][0]) < 0.6
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for lab, ex, prior in (("half-Cauchy(5)", exact, stats.halfcauchy), ("half-normal(5)", exact_hn, stats.halfnorm)):
            grid, dens = ex["tau_density"]
            keep = grid < 25
            line, = ax.plot(grid[keep], dens[keep], label=f"posterior, {lab} prior")
            ax.plot(grid[keep], prior.pdf(grid[keep], scale=5), ls=":", color=line.get_color(), label=f"{lab} prior")
        ax.hist(t, bins=60, range=(0, 25), density=True, alpha=0.3, label="draws (half-Cauchy)")
        ax.set_xlabel("tau"); ax.legend(fontsize=8); plt.tight_layout()
    """),
    md("""
    The lighter-tailed half-normal pulls tau (and with it the school effects' spread) down a
    little; the conclusions about mu barely move. Report the prior you used, and check how much it
    matters: with few studies, tau is as much prior as data.
    """),
]

NB9 = [
    md("""
    # 9. Kinship: heritability and an association scan that survives population structure

    In animal and plant breeding and in human genetics, the individuals are **related**, and how
    closely is known: from a pedigree, or from genome-wide markers as a **genetic relationship
    matrix** (GRM) K, where K[i, j] is the genetic covariance of individuals i and j in units of the
    additive genetic variance. The random intercept of an individual is then not independent of the
    others' but

    u ~ N(0, sd_g^2 K),

    and `bayeslmm` fits it with `Model(..., cov={"animal": K})`. Two uses:

    1. **Heritability** h^2 = sd_g^2 / (sd_g^2 + sigma^2): how much of the variance of the trait is
       additive genetic (reported as the ICC of the term).
    2. **Association scans** (GWAS): each marker tested as a fixed effect. When the sample mixes
       subpopulations whose trait means differ, ordinary least squares (OLS) finds "associations"
       at every marker whose frequency differs between them. The LMM's K describes the structure,
       and the inflation goes away.

    Both are fast because of one trick (EMMA, Kang et al. 2008; FaST-LMM, Lippert et al. 2011):
    rotate the data once by K's eigenvectors and the marginal covariance of y becomes diagonal.
    """),
    SETUP,
    md("""
    ## Genotypes with population structure

    `bayeslmm.scan.simulate_gwas` draws **Balding-Nichols** genotypes: 500 individuals from two
    subpopulations (F_ST = 0.1: allele frequencies drift apart) at 6,000 independent markers, and a
    trait that is one residual SD higher in subpopulation 2, plus a polygenic part from 100 causal
    markers. The first 4,000 markers are tested; the GRM is built from the other 2,000 (testing a
    marker against a K that contains it deflates its statistic: the "proximal contamination" that
    FaST-LMM's leave-one-chromosome-out avoids).

    The leading eigenvectors of K separate the two subpopulations: K *knows* the structure.
    """),
    code("""
        from bayeslmm.scan import genetic_relationship, simulate_gwas

        sim = simulate_gwas(n=500, markers=6000, fst=0.1, pop_shift=1.0, seed=3)
        G = sim.G[:, :4000]                                       # tested markers
        K = genetic_relationship(sim.G[:, 4000:], sim.ids)        # GRM from the others
        ev, vec = np.linalg.eigh(K.to_numpy())

        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        for k, colour in ((0, "tab:blue"), (1, "tab:orange")):
            sel = sim.pop == k
            ax.scatter(vec[sel, -1], vec[sel, -2], s=8, c=colour, label=f"subpopulation {k + 1}")
        ax.set_xlabel("eigenvector 1 of K"); ax.set_ylabel("eigenvector 2 of K"); ax.legend()
        plt.show()
        print(f"mean diagonal of K {np.diag(K).mean():.3f}; top eigenvalues {np.round(ev[-3:][::-1], 1)}")
    """),
    md("""
    ## OLS vs the LMM scan: genomic inflation

    The **genomic inflation factor** lambda = median(chi^2) / 0.455 compares the median test
    statistic with its value under the null. Almost all markers are null, so a correct test gives
    lambda close to 1. `bayeslmm.scan(y, G)` without K is OLS; with K it is the LMM scan (h^2 by
    REML on the null model, one t-test per marker on the rotated data: FaST-LMM's statistic; the
    test suite checks that it agrees with `fastlmm`).
    """),
    code("""
        ols = blmm.scan(sim.y, G)
        lmm = blmm.scan(sim.y, G, K)

        null = np.setdiff1d(np.arange(G.shape[1]), sim.causal)     # markers with no effect
        bonferroni = 0.05 / G.shape[1]
        fp_ols = int((ols.table["p_value"].to_numpy()[null] < bonferroni).sum())
        fp_lmm = int((lmm.table["p_value"].to_numpy()[null] < bonferroni).sum())
        print(f"OLS: lambda = {ols.lambda_gc:.2f}, {fp_ols} null markers pass Bonferroni")
        print(f"LMM: lambda = {lmm.lambda_gc:.2f}, {fp_lmm} null markers pass Bonferroni (h2 {lmm.h2:.2f})")
        assert ols.lambda_gc > 2 and fp_ols > 50          # OLS: structure read as association
        assert abs(lmm.lambda_gc - 1) < 0.15 and fp_lmm <= 2
    """),
    code("""
        fig, ax = plt.subplots(figsize=(4.5, 4))
        expected = -np.log10((np.arange(1, len(null) + 1) - 0.5) / len(null))
        for res, name in ((ols, "OLS"), (lmm, "LMM (K)")):
            observed = np.sort(-np.log10(res.table["p_value"].to_numpy()[null]))[::-1]
            ax.plot(expected, observed, ".", ms=3, label=f"{name}, lambda = {res.lambda_gc:.2f}")
        ax.plot([0, expected.max()], [0, expected.max()], "k--", lw=1)
        ax.set_xlabel("expected -log10 p"); ax.set_ylabel("observed -log10 p (null markers)")
        ax.legend(); plt.show()
    """),
    md("""
    The OLS points leave the diagonal at once: hundreds of markers look associated only because
    their frequency differs between the subpopulations, and so does the trait. The LMM points lie
    on it. Adding the subpopulation as a covariate would also fix this example, but only when the
    structure is known and discrete; K also covers continuous admixture and cryptic relatedness.

    ## Heritability: a Bayesian fit with K

    Now a trait simulated from the model itself: 600 animals, a GRM from 1,200 markers,
    y = 10 + 0.5 x + u + e with u ~ N(0, 0.5 K) and e ~ N(0, 0.5), so **h^2 = 0.5**.
    With one K term and a Gaussian response `fit()` takes the exact **rotated path** (it prints
    why): NUTS samples only b, sd and sigma on the rotated data, and the 600 breeding values u are
    drawn exactly afterwards. `fit.icc()` reports the ICC of the term as `h2`.
    """),
    code("""
        rng = np.random.default_rng(7)
        n = 600
        markers = rng.binomial(2, rng.uniform(0.05, 0.5, 1200), size=(n, 1200))
        ids = [f"a{i}" for i in range(n)]
        K2 = genetic_relationship(markers, ids)
        ev2, vec2 = np.linalg.eigh(K2.to_numpy())
        u = np.sqrt(0.5) * vec2 @ (np.sqrt(np.clip(ev2, 0, None)) * rng.standard_normal(n))
        x = rng.standard_normal(n)
        animals = pd.DataFrame({"y": 10 + 0.5 * x + u + np.sqrt(0.5) * rng.standard_normal(n),
                                "x": x, "animal": ids})

        fit = blmm.Model("y ~ x + (1 | animal)", animals, cov={"animal": K2}).fit(seed=1, **FAST)
        h2 = fit.icc()
        print(h2)
        row = h2.table.iloc[0]
        # this data set's posterior puts the true 0.5 at the edge of the 95% HDI (its upper end is
        # 0.50-0.51 with 2 x 4000 draws): check the 99% interval, which contains it by ~0.05
        row99 = fit.icc(prob=0.99).table.iloc[0]
        assert row["kind"] == "h2" and 0.1 < row99["hdi_lower"] < 0.5 < row99["hdi_upper"]
    """),
    code("""
        r = fit.posterior["r_animal"].isel(animal__term=0).mean(("chain", "draw")).sel(animal__level=ids)
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        ax.scatter(u, r, s=6)
        ax.plot([u.min(), u.max()], [u.min(), u.max()], "k--", lw=1)
        ax.set_xlabel("true breeding value u"); ax.set_ylabel("posterior mean of u")
        plt.show()
        accuracy = np.corrcoef(u, r)[0, 1]
        print(f"accuracy of the breeding values: cor(u, E[u | y]) = {accuracy:.2f}")
        assert accuracy > 0.5
    """),
    md("""
    The posterior means of the breeding values are shrunk towards 0 (they lie on a flatter line
    than the diagonal): each animal's own record is noisy, and relatives contribute through K.

    **What to take away**

    * `cov={"animal": K}` gives a random intercept with a known covariance; K must be symmetric
      positive semi-definite and have a row for every level (clear errors otherwise).
    * h^2 is relative to K: it is the narrow-sense heritability when K is a relationship matrix
      (mean diagonal about 1) that captures the causal variants' relatedness.
    * With population structure, test markers with the LMM (`bayeslmm.scan(y, G, K)`, or
      `bayeslmm.scan(null_fit, G)` to use a Bayesian null model's variance components) and check
      lambda.
    """),
]


# -------------------------------------------------------------------------------------------------
# Notebooks 10 and 11 (issue 15): missing data and within-between effects; few clusters.
MAR_SIM = code("""
    def mar_data(seed=0, N=100, T=5, sd_u=2.0, a=-1.5, b=1.5):
        \"\"\"y_it = 10 + t + u_i + e_it; dropout at visit k with probability logistic(a + b z),
        z the standardised last observed value: missing at random (observed values only).\"\"\"
        rng = np.random.default_rng(seed)
        u = rng.normal(scale=sd_u, size=N)
        t = np.tile(np.arange(T), N)
        i = np.repeat(np.arange(N), T)
        Y = (10 + 1.0 * t + u[i] + rng.normal(size=N * T)).reshape(N, T)
        for k in range(1, T):
            p = 1 / (1 + np.exp(-(a + b * (Y[:, k - 1] - (10 + (k - 1))) / sd_u)))
            drop = (rng.uniform(size=N) < p) | np.isnan(Y[:, k - 1])
            Y[drop, k:] = np.nan
        return pd.DataFrame({"y": Y.ravel(), "time": t, "id": [f"p{k}" for k in i]})

    df = mar_data(0)
    done = df.groupby("id")["y"].transform(lambda v: v.notna().all()).to_numpy()
    comp = df[done].reset_index(drop=True)
    print(f"{df.y.notna().sum()} of {len(df)} visits observed; {comp.id.nunique()} of 100 patients completed")
    df.groupby("time")["y"].agg(observed="count", observed_mean="mean").round(2)
""")

NB10 = [
    md("""
    # 10. Missing data (MAR dropout) and within-between effects

    **Part 1.** A longitudinal study: 100 patients, 5 visits (`time` 0 to 4), true mean
    `10 + time` (so **14 at the last visit**), a patient effect with SD 2 and residual SD 1.
    Patients drop out, and those whose last measurement was *high* are more likely to leave.
    The dropout depends only on values we observed: the data are **missing at random** (MAR).

    Two analyses are common:

    * **completers only**: keep the patients with all 5 visits. They are a selected group (low
      values), so their mean is biased;
    * the **mixed model on every observed row**: each patient contributes the visits before
      dropout. Under MAR the likelihood of the observed rows is all we need (the dropout process
      can be ignored), so the estimates are unbiased. bayeslmm drops only the rows whose
      response is missing, never a whole patient (`missing="drop_response"` also makes a
      missing *predictor* an error that names the column).
    """),
    SETUP,
    FAST_NOTE,
    MAR_SIM,
    md("""
    The observed mean at each visit falls behind the truth (`10 + time`): the high patients have
    left. Now the two analyses, the same model `y ~ time + (1 | id)`:
    """),
    code("""
    full = blmm.Model("y ~ time + (1 | id)", df, missing="drop_response").fit(**FAST, seed=1, verbose=False)
    print(full.design.notes[0]); print(full.design.notes[1])
    completers = blmm.Model("y ~ time + (1 | id)", comp).fit(**FAST, seed=1, verbose=False)
    end = {name: f.draws("Intercept") + 4 * f.draws("time")
           for name, f in (("all observed rows", full), ("completers only", completers))}
    table = pd.DataFrame({k: {"mean": v.mean(), "sd": v.std(), "2.5%": np.quantile(v, 0.025),
                              "97.5%": np.quantile(v, 0.975)} for k, v in end.items()}).T
    table.round(3)
    """),
    code("""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for pid, d in df.dropna().groupby("id"):
        ax.plot(d.time, d.y, color="grey", lw=0.5, alpha=0.5)
    ax.plot(range(5), df.groupby("time").y.mean(), "o-", color="C3", label="observed mean per visit")
    grid = np.arange(5)
    for name, f, c in (("mixed model, all rows", full, "C0"), ("completers", completers, "C1")):
        b = f.summary()["mean"]
        ax.plot(grid, b["Intercept"] + b["time"] * grid, color=c, lw=2, label=name)
    ax.plot(grid, 10 + grid, "k--", label="truth")
    ax.set(xlabel="visit", ylabel="y", title="Trajectories before dropout")
    ax.legend(fontsize=8)
    ax = axes[1]
    for (name, v), c in zip(end.items(), ("C0", "C1")):
        ax.hist(v, bins=40, alpha=0.6, color=c, density=True, label=name)
    ax.axvline(14, color="k", ls="--", label="truth 14")
    ax.set(xlabel="mean at the last visit", title="Posterior of the final mean")
    ax.legend(fontsize=8)
    plt.show()
    """),
    code("""
    # the claims of part 1 (tolerance: 3 posterior SDs; Monte Carlo error of the means is ~0.01)
    a, c = end["all observed rows"], end["completers only"]
    assert abs(a.mean() - 14) < 3 * a.std(), "all observed rows: the truth is recovered"
    assert c.mean() - 14 < -3 * c.std(), "completers: biased low"
    assert full.design.factors[0].n_levels == 100, "no patient was deleted"
    """),
    md("""
    One data set could be luck. Over repeated data sets (`bench/applied_studies.py`, stored in
    `docs/applied_studies.json`): the same analyses with statsmodels' REML on 100 data sets,
    and bayeslmm's posterior mean on a few (each fit takes seconds), with Monte Carlo errors:
    """),
    code("""
    import json
    study = json.loads((ROOT / "docs" / "applied_studies.json").read_text())
    ref, bayes = study["reml_reference"], study["mar"]
    rep = pd.DataFrame({"REML, all rows": ref["all_rows"], "REML, completers": ref["completers"],
                        "bayeslmm, all rows": bayes["all_rows"], "bayeslmm, completers": bayes["completers"]}).T
    display(rep.round(3))
    for name, r in rep.iterrows():
        if "all rows" in name:
            assert abs(r["mean"] - 14) < 3 * r["mcse"], f"{name}: unbiased within 3 Monte Carlo errors"
        else:
            assert r["mean"] - 14 < -10 * r["mcse"], f"{name}: biased, far beyond Monte Carlo error"
    """),
    md("""
    MAR is an assumption: if dropout depends on the *unobserved* value itself (missing not at
    random), no analysis of the observed data alone is unbiased; then a sensitivity analysis
    (pattern-mixture or selection models) is needed.

    ## Part 2. Within-between (Mundlak) effects

    A random intercept model `y ~ x + (1 | g)` assumes the group effects are uncorrelated with
    `x`. Here they are not: groups with a high mean of `x` also have high intercepts (a
    group-level confounder). The **within** effect (how `y` changes when `x` changes inside a
    group) is 1.0; the **between** effect (group means against group means) is about 1.9.
    The plain slope is a mixture of the two and is biased for both.

    `within(x, g)` (x minus its group mean) and `between(x, g)` (the group mean) split `x`;
    `fit.within_between()` reports both and the posterior of **within - between**: far from 0,
    the plain slope is not to be trusted (a Bayesian Hausman test).
    """),
    code("""
    rng = np.random.default_rng(1)
    J, m = 50, 5
    g = np.repeat(np.arange(J), m)
    a_g = rng.normal(size=J)
    x = a_g[g] + 0.7 * rng.normal(size=J * m)
    u = 1.0 * a_g + rng.normal(scale=0.5, size=J)              # group effects correlated with x
    wdf = pd.DataFrame({"y": 1.0 + 1.0 * x + u[g] + rng.normal(size=J * m), "x": x, "g": g})
    plain = blmm.Model("y ~ x + (1 | g)", wdf).fit(**FAST, seed=1, verbose=False)
    wb = blmm.Model("y ~ within(x, g) + between(x, g) + (1 | g)", wdf).fit(**FAST, seed=1, verbose=False)
    print(plain.summary().loc[["x"], ["mean", "sd", "hdi_lower", "hdi_upper"]])
    wb.within_between()
    """),
    code("""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(plain.draws("x"), bins=40, alpha=0.6, density=True, label="plain slope of x")
    ax.hist(wb.draws("within(x, g)"), bins=40, alpha=0.6, density=True, label="within effect")
    ax.hist(wb.draws("between(x, g)"), bins=40, alpha=0.6, density=True, label="between effect")
    ax.axvline(1.0, color="k", ls="--", label="true within effect")
    ax.set(xlabel="slope", title="The plain slope mixes within and between")
    ax.legend(fontsize=8)
    plt.show()
    """),
    code("""
    t = wb.within_between()
    w, p = t.loc["x | g: within"], plain.summary().loc["x"]
    assert abs(w["mean"] - 1.0) < 3 * w["sd"], "the within effect is recovered"
    assert p["mean"] - 1.0 > 3 * p["sd"], "the plain random-intercept slope is biased"
    assert t.loc["x | g: within - between", "hdi_upper"] < 0, "the check flags the correlation"
    # and over repeated data sets (docs/applied_studies.json; mean +- Monte Carlo error)
    ref, m = study["reml_reference"], study["mundlak"]
    print(f"plain slope {ref['plain']['mean']:.3f} +- {ref['plain']['mcse']:.3f}, within "
          f"{ref['within']['mean']:.3f} +- {ref['within']['mcse']:.3f} (REML, {ref['within']['R']} data sets)")
    assert ref["plain"]["mean"] - 1 > 10 * ref["plain"]["mcse"] and abs(ref["within"]["mean"] - 1) < 3 * ref["within"]["mcse"]
    assert m["plain_slope"]["mean"] - 1 > 3 * m["plain_slope"]["mcse"] and abs(m["within"]["mean"] - 1) < 3 * m["within"]["mcse"]
    """),
    md("""
    **When to use it.** Whenever a predictor varies within groups *and* its group means may be
    related to the group effects (pupils' SES and school quality, a person's average exercise
    and their constitution, a firm's average investment and its management). Report the within
    effect as the causal-leaning "change inside a group"; the between effect describes groups.
    If within - between is near 0, the plain model is fine and more precise.

    **Predictions on new data.** A group seen in the fit keeps its fitted group mean of `x`
    (a fitted group at a new `x` is a within-group change); a new group is described by its own
    rows in the new data (its mean of `x` over those rows), so pass all of a new group's rows in
    one call. See `help(bayeslmm.mundlak)`.
    """),
]

NB11 = [
    md("""
    # 11. Few clusters: how good are the intervals with 6 clusters?

    A cluster-randomised study with only **6 clusters** (10 people each), 3 treated and 3
    controls, true treatment effect **0.5**, between-cluster SD 0.5, residual SD 1. The
    treatment varies only between clusters, so its standard error rests on 6 numbers, and the
    between-cluster variance is estimated from them too.

    Three 95% intervals for the treatment effect:

    * **naive Wald**: REML estimate +- 1.96 SE (statsmodels' `MixedLM`). It ignores that the
      variance components are estimated from 6 clusters;
    * **t with J - 2 degrees of freedom**: the same SE with a t quantile on 4 df. This is what the
      **Kenward-Roger** and **Satterthwaite** corrections give here: in a balanced design with
      a cluster-level treatment their degrees of freedom are J - 2 = 4 (the exact t-test on
      cluster means, when the REML between-cluster variance is positive). Kenward-Roger also
      inflates the SE for unbalanced designs; statsmodels has neither correction (R's lmerTest
      and pbkrtest do), so we compute the balanced-case answer ourselves;
    * **Bayesian**: bayeslmm's equal-tailed 95% posterior interval, which averages over the
      uncertainty in the between-cluster SD.
    """),
    SETUP,
    FAST_NOTE,
    code("""
    import statsmodels.formula.api as smf
    from scipy import stats

    def few_clusters_data(seed, J=6, m=10, effect=0.5, sd_c=0.5):
        rng = np.random.default_rng(seed)
        c = np.repeat(np.arange(J), m)
        treat = (np.arange(J) % 2)[c].astype(float)
        y = effect * treat + rng.normal(scale=sd_c, size=J)[c] + rng.normal(size=J * m)
        return pd.DataFrame({"y": y, "treat": treat, "cluster": [f"c{k}" for k in c]})

    rows = []
    for seed in range(4):                       # a few replicates here; the full study is below
        d = few_clusters_data(seed)
        b = blmm.Model("y ~ treat + (1 | cluster)", d).fit(**FAST, seed=seed, verbose=False).draws("treat")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = smf.mixedlm("y ~ treat", d, groups="cluster").fit(reml=True)
        est, se = r.params["treat"], r.bse["treat"]
        z, t4 = stats.norm.ppf(0.975), stats.t.ppf(0.975, 4)
        rows.append({"seed": seed, "bayes_lo": np.quantile(b, 0.025), "bayes_hi": np.quantile(b, 0.975),
                     "wald_lo": est - z * se, "wald_hi": est + z * se,
                     "t4_lo": est - t4 * se, "t4_hi": est + t4 * se})
    reps = pd.DataFrame(rows).set_index("seed")
    reps.round(2)
    """),
    code("""
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, (name, c) in enumerate((("bayes", "C0"), ("wald", "C3"), ("t4", "C2"))):
        for s in reps.index:
            ax.plot([reps.loc[s, f"{name}_lo"], reps.loc[s, f"{name}_hi"]], [s + 0.2 * k] * 2, color=c, lw=3,
                    label={"bayes": "Bayesian", "wald": "naive Wald (z)", "t4": "t, 4 df (KR / Satterthwaite)"}[name]
                    if s == 0 else None)
    ax.axvline(0.5, color="k", ls="--", label="truth 0.5")
    ax.set(xlabel="treatment effect", ylabel="replicate", title="95% intervals, 6 clusters")
    ax.legend(fontsize=8)
    plt.show()
    width = {k: (reps[f"{k}_hi"] - reps[f"{k}_lo"]).mean() for k in ("bayes", "wald", "t4")}
    print({k: round(v, 2) for k, v in width.items()})
    assert width["bayes"] > width["wald"] and width["t4"] > width["wald"], "the naive interval is the narrowest"
    """),
    md("""
    Four replicates show the widths, not the coverage. The full study (`bench/applied_studies.py`,
    stored in `docs/applied_studies.json`) measures the coverage with its Monte Carlo error
    (`mcse`, binomial): the REML intervals on 300 simulated data sets, the Bayesian interval on the
    first 24 of them (each fit takes seconds), so its Monte Carlo error is larger (about 0.045):
    """),
    code("""
    import json
    study = json.loads((ROOT / "docs" / "applied_studies.json").read_text())["few_clusters"]
    cov = pd.DataFrame({name: study[f"coverage_{k}"] for k, name in
                        (("bayes", "Bayesian"), ("wald", "naive Wald"), ("t_df", "t, 4 df"))}).T
    cov["mean width"] = [study[f"width_{k}"]["mean"] for k in ("bayes", "wald", "t")]
    display(cov)
    same = study["coverage_wald_same_seeds_as_bayes"]
    print(f"on the {same['R']} data sets of the Bayesian runs: Bayesian interval covered "
          f"{round(study['coverage_bayes']['mean'] * same['R'])}, naive Wald {round(same['mean'] * same['R'])}")
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(cov.index, cov["mean"], yerr=2 * cov["mcse"], color=["C0", "C3", "C2"], capsize=4)
    ax.axhline(0.95, color="k", ls="--")
    ax.set(ylim=(0.6, 1.0), ylabel="coverage of 95% interval", title=f"{study['J']} clusters (bars: 2 MC errors)")
    plt.show()
    """),
    code("""
    # the claims, with 2 Monte Carlo errors of slack
    w, b, t = (study[f"coverage_{k}"] for k in ("wald", "bayes", "t_df"))
    assert w["mean"] + 2 * w["mcse"] < 0.95, "the naive Wald interval under-covers"
    assert abs(t["mean"] - 0.95) < 2 * t["mcse"], "the t interval on J - 2 df is at its nominal level"
    assert b["mean"] + 2 * b["mcse"] >= 0.95, "the Bayesian coverage is not below nominal beyond MC error"
    assert study["width_bayes"]["mean"] > study["width_wald"]["mean"], "the Bayesian interval is wider than Wald's"
    assert study["coverage_bayes"]["mean"] >= same["mean"], "and covers at least as often on the same data sets"
    """),
    md("""
    **What to take from this.** With few clusters the naive Wald interval is too narrow: it
    treats the estimated between-cluster variance as known and uses the normal quantile. The
    small-sample corrections repair most of that: Satterthwaite replaces the normal by a t with
    estimated degrees of freedom; Kenward-Roger (Kenward & Roger 1997, Biometrics 53: 983-997)
    also corrects the SE for the uncertainty in the variance components. Reviews of simulation
    studies (e.g. McNeish & Stapleton 2016, Educational Psychology Review 28: 295-314) recommend
    REML with Kenward-Roger when clusters are few. The Bayesian interval needs no correction
    step: it averages over the posterior of the between-cluster SD, so it comes out wider than
    the Wald interval. How close its coverage is to 95% we can only say as precisely as the
    number of Bayesian replicates allows (see the Monte Carlo error above; run
    `bench/applied_studies.py --reps-clusters 200` to pin it down); on the same data sets it
    covered the truth at least as often as the naive Wald interval. Its other price is that, with
    6 clusters, the posterior of the between-cluster SD depends on the prior (see
    `fit.prior_sensitivity()` and notebook 6): report the prior.
    """),
]


NOTEBOOKS = {
    "01_repeated_measures_pigeons.ipynb": NB1,
    "02_pooling_radon.ipynb": NB2,
    "03_icc_schools_dyestuff.ipynb": NB3,
    "04_random_slopes_sleepstudy.ipynb": NB4,
    "05_loo_model_comparison.ipynb": NB5,
    "06_eight_schools.ipynb": NB6,
    "07_population_averaged_logit.ipynb": NB7,
    "08_robust_outliers.ipynb": NB8,
    "09_kinship_gwas.ipynb": NB9,
    "10_missing_data_within_between.ipynb": NB10,
    "11_few_clusters.ipynb": NB11,
}


def execute(nb, timeout: int = 600):
    """Run every cell of ``nb`` in a fresh kernel in notebooks/ (nbclient); the outputs go into ``nb``.
    A failing cell (a check whose claim no longer holds) raises ``nbclient.exceptions.CellExecutionError``."""
    from nbclient import NotebookClient
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE.parent)] + ([old] if old else []))  # this checkout's package
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                       resources={"metadata": {"path": str(HERE)}}).execute()
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    return nb


_SAMPLER_LOG = re.compile(r"^(Initializing NUTS|Multiprocess sampling|Sequential sampling|NUTS: \[|Sampling \d+ chains?"
                          r"|Only \d+ samples per chain|\s+warnings\.warn\(|\s+return |\s+fit_cache)")
_WARNING_AT = re.compile(r"^\S+\.py:\d+: (\w+: )")


def clean_outputs(nb):
    """Stored outputs without machine noise: PyMC's sampler log lines are dropped, and a warning's
    source path (this machine's site-packages or a temporary kernel file) is cut to its message."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outs = []
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream" and o.get("name") == "stderr":
                lines = [_WARNING_AT.sub(r"\1", line) for line in o["text"].splitlines()
                         if not _SAMPLER_LOG.match(line)]
                if not any(line.strip() for line in lines):
                    continue
                o["text"] = "\n".join(lines) + "\n"
            outs.append(o)
        cell["outputs"] = outs
    return nb


def notebook(name: str):
    """The notebook ``name`` as built from its cell sources (no outputs)."""
    cells = flatten(NOTEBOOKS[name])
    for i, cell in enumerate(cells):
        cell["id"] = f"{Path(name).stem[:2]}-{i:02d}"   # stable ids: rebuilding gives no diff
    return new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"}})


def same_sources(a, b) -> bool:
    return [(c.cell_type, c.source) for c in a.cells] == [(c.cell_type, c.source) for c in b.cells]


def build(out_dir: Path = HERE, *, run: bool = False, only=None) -> list[Path]:
    """Write the notebooks to ``out_dir``; returns their paths.

    With ``run=True`` each notebook is executed and stored with its outputs (so it reads on a code
    host without running). Without it, a stored notebook whose cell sources are unchanged is kept
    as it is (with its outputs); a changed one is written without outputs and must be executed.
    """
    paths = []
    for name in NOTEBOOKS:
        if only and not any(o in name for o in only):
            continue
        nb, path = notebook(name), Path(out_dir) / name
        if run:
            t0 = time.perf_counter()
            clean_outputs(execute(nb))
            print(f"executed {name} in {time.perf_counter() - t0:.0f} s")
        elif path.exists() and same_sources(nbformat.read(path, as_version=4), nb):
            paths.append(path)
            continue
        else:
            print(f"{name}: sources changed, written without outputs (run with --execute)")
        nbformat.write(nb, path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", nargs="?", default=str(HERE))
    ap.add_argument("--execute", action="store_true", help="run each notebook and store its outputs")
    ap.add_argument("--only", nargs="*", help="only the notebooks whose names contain one of these")
    args = ap.parse_args()
    for p in build(Path(args.out_dir), run=args.execute, only=args.only):
        print("wrote", p)
