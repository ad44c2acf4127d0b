"""Figures and the Markdown report of ``vaegen compare`` (:mod:`vaegen.studies.compare`).

``write_report(ctx, rows, results, ...)`` writes ``<workdir>/report/``:

* ``report.md`` -- the metric table, the figures and a plain-language answer whose every
  comparative word is chosen by comparing the measured numbers;
* ``headline.png`` -- samples of the headline rows, five panels to a row: data, VAE, AE + N(0, I),
  the AE + ex-post densities, RAE + GMM, WAE, AAE, VQ-VAE, DAE chain, MADE;
* ``samples.png`` -- a grid of samples for every row;
* ``reconstructions.png``, ``interpolations.png``, ``latent_map.png`` (2-D variants with the
  prior's contours over the codes), ``dae_chain.png``, ``path.png`` (the fixed-variance path).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import textwrap
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vaegen import files as files_lib
from vaegen.blocks import priors as priors_lib
from vaegen.studies import compare as compare_lib
from vaegen.runs.recipes import LogPx
from vaegen.runs.recipes import trained as trained_lib
from vaegen.studies import figures
from vaegen.studies import metrics as metrics_lib
from vaegen.studies import paired as paired_lib


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _save(fig, path: pathlib.Path, dpi: int = 100) -> pathlib.Path:
    files_lib.write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"), kind="figure")
    return path


def _imshow(ax, grid: np.ndarray) -> None:
    if grid.shape[-1] == 1:
        ax.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def panels_figure(path: pathlib.Path, panels: Sequence[tuple[str, np.ndarray]], *, per_panel: int, panel_cols: int,
                  fig_cols: int, panel_inches: float = 1.9, fontsize: int = 8, dpi: int = 100) -> pathlib.Path:
    """One figure of image-grid panels: ``panels`` = [(title, images [N, H, W, C])]."""
    n = len(panels)
    cols = min(fig_cols, n)
    rows = math.ceil(n / cols)
    title_lines = max(title.count("\n") + 1 for title, _ in panels)
    fig = _figure(cols * panel_inches, rows * (panel_inches + 0.1 + title_lines * fontsize / 72 * 1.3))
    for i, (title, images) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        _imshow(ax, figures.image_grid(np.asarray(images[:per_panel], np.float32), panel_cols))
        ax.set_title(title, fontsize=fontsize)
    fig.tight_layout()
    return _save(fig, path, dpi)


def labelled_rows_figure(path: pathlib.Path, rows: Sequence[tuple[str, np.ndarray]], *, title: str,
                         row_inches: float = 0.62, dpi: int = 100) -> pathlib.Path:
    """Rows of images, each with a label on the left: ``rows`` = [(label, images [N, H, W, C])]."""
    ncols = max(len(images) for _, images in rows)
    fig = _figure(1.6 + ncols * row_inches, 0.3 + len(rows) * row_inches)
    for i, (label, images) in enumerate(rows):
        ax = fig.add_subplot(len(rows), 1, i + 1)
        _imshow(ax, figures.image_grid(np.asarray(images, np.float32), ncols))
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path, dpi)


# --- individual figures ----------------------------------------------------------------------------

def _display(ctx, name: str) -> np.ndarray | None:
    path = ctx.workdir / "rows" / f"{name}.samples.npz"
    if not path.exists():
        return None
    return np.asarray(files_lib.load_npz(path, what="row's samples", fix="measure the row again (delete it)",
                                         names=("display",))["display"], np.float32)


HEADLINE_COLUMNS = 5  # panels per row of headline.png: 5 x 1.9 in at 100 dpi, about 950 px wide


def samples_figures(ctx, rows, results, out: pathlib.Path) -> dict[str, pathlib.Path]:
    panels = {}
    for r in rows:
        images = _display(ctx, r.name)
        if images is None:
            continue
        fd = results[r.name].get("samples", {}).get("fd")
        title = f"{r.label}\nfrom {r.sampled_from}" + (f"\nFD {fd:.2f}" if fd is not None else "")
        short = textwrap.fill(r.label, 22, break_on_hyphens=False)  # headline titles: no wider than a panel
        panels[r.name] = (title, images, short + (f"\nFD {fd:.2f}" if fd is not None else ""))
    paths = {}
    if panels:
        paths["samples"] = panels_figure(out / "samples.png", [(t, im) for t, im, _ in panels.values()], per_panel=36,
                                         panel_cols=6, fig_cols=5)
        headline = ["data", "vae", "ae+n01", "ae+gmm", "ae+flow", "ae+two_stage", "ae+diffusion", "rae+gmm", "wae", "aae",
                    "vq+prior", "dae", "made"]
        chosen = [(short, panels[n][1]) for n in headline if n in panels for short in [panels[n][2]]]
        if chosen:  # rows of at most HEADLINE_COLUMNS panels: readable at a page's column width
            paths["headline"] = panels_figure(out / "headline.png", chosen, per_panel=16, panel_cols=4,
                                              fig_cols=HEADLINE_COLUMNS, panel_inches=1.9, fontsize=10, dpi=100)
    return paths


def reconstructions_figure(ctx, out: pathlib.Path, n: int = 10) -> pathlib.Path | None:
    x = ctx.x_test[:n]
    rows = [("test images", np.asarray(x))]
    for name, run in ctx.runs.items():
        if not getattr(run.model, "has_latents", True) or name.endswith("_2d"):
            continue
        rec = jax.jit(lambda v, x: run.model.apply(v, method=lambda m: m.p_x_given_z(m.q_z_given_x(x).mean()).mean()))(
            run.variables, x)
        rows.append((_label(ctx, name), np.asarray(rec)))
    if len(rows) < 2:
        return None
    return labelled_rows_figure(out / "reconstructions.png", rows,
                                title="Reconstructions E[x | z = E_q[z|x]] of the same test images")


def interpolations_figure(ctx, out: pathlib.Path, steps: int = 10) -> pathlib.Path | None:
    labels = ctx.splits.test_labels
    names = [n for n in ("vae", "ae", "rae", "fixed_scale_0.01_beta_1") if n in ctx.runs]
    if not names:
        return None
    # Two pairs of test images of different classes (the first found).
    pairs, i = [], 0
    while len(pairs) < 2 and i + 1 < ctx.x_test.shape[0]:
        if labels is None or labels[i] != labels[i + 1]:
            pairs.append((i, i + 1))
        i += 2
    t = jnp.linspace(0.0, 1.0, steps)[:, None]
    rows = []
    for name in names:
        run = ctx.runs[name]
        for a, b in pairs:
            xs = ctx.x_test[jnp.array([a, b])]

            def interp(v, xs):
                def f(m):
                    z = m.q_z_given_x(xs).mean()                       # [2, D]
                    zt = (1 - t) * z[0] + t * z[1]                      # [steps, D]
                    return m.p_x_given_z(zt).mean()
                return run.model.apply(v, method=f)

            decoded = np.asarray(jax.jit(interp)(run.variables, xs))
            rows.append((f"{_label(ctx, name)}", np.concatenate([np.asarray(xs[:1]), decoded, np.asarray(xs[1:])])))
    return labelled_rows_figure(out / "interpolations.png", rows,
                                title="Two test images (ends) and E[x|z] along the line between their codes")


def latent_map_figure(ctx, out: pathlib.Path, results_2d: dict[str, float]) -> pathlib.Path | None:
    if "vae_2d" not in ctx.runs and "ae_2d" not in ctx.runs:
        return None
    labels = ctx.splits.test_labels
    n = min(2000, int(ctx.x_test.shape[0]))
    x = ctx.x_test[:n]
    panels = []
    for name in ("vae_2d", "ae_2d"):
        if name not in ctx.runs:
            continue
        run = ctx.runs[name]
        means = np.asarray(jax.jit(lambda v, x: run.model.apply(v, x, method="q_z_given_x").mean())(run.variables, x))
        panels.append((name, "N(0, I)", means, lambda g: priors_lib.StandardNormal(latent_dim=2).apply({}).log_prob(g)))
        if name == "ae_2d":
            for label, gen in _expost_priors(ctx, name, smooth=True):
                panels.append((name, label, means, lambda g, gen=gen: gen.model.apply(
                    gen.variables, method=lambda m: m.p_z().log_prob(g))))
    cols = min(len(panels), 3)
    nrows = -(-len(panels) // cols)
    fig = _figure(4.2 * cols, 4.2 * nrows)
    cmap_points = "tab10"
    for i, (name, prior_name, codes, log_prob) in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, i + 1)
        lo = np.minimum(np.percentile(codes, 0.5, 0), -3.0) - 0.5
        hi = np.maximum(np.percentile(codes, 99.5, 0), 3.0) + 0.5
        gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 160), np.linspace(lo[1], hi[1], 160))
        grid = jnp.asarray(np.stack([gx, gy], -1).reshape(-1, 2), jnp.float32)
        log_density = np.asarray(jax.jit(log_prob)(grid), np.float64).reshape(gx.shape)
        top = float(np.max(log_density))
        levels = np.linspace(top - 8.0, top, 9)       # log p(z) down to 8 nats below its maximum
        ax.contourf(gx, gy, np.maximum(log_density, top - 8.0), levels=levels, cmap="Greys", alpha=0.6)
        ax.contour(gx, gy, log_density, levels=levels[1:-1:2], colors="k", linewidths=0.4)
        c = labels[:n] if labels is not None else None
        ax.scatter(codes[:, 0], codes[:, 1], c=c, cmap=cmap_points, s=2, alpha=0.8, vmin=0, vmax=9)
        off = results_2d.get(f"{name}|{prior_name}")
        title = f"{_label(ctx, name)}: codes over p(z) = {prior_name}"
        if off is not None:
            title += f"\n{100 * off:.0f}% of p(z)'s mass lies off the codes"
        ax.set_title(title, fontsize=8)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal")
        ax.tick_params(labelsize=6)
    fig.suptitle("2-D latent space: E_q[z|x] of test images (colour = class) over log p(z) of the prior samples are drawn "
                 "from (grey: down to 8 nats below its maximum)", fontsize=9)
    fig.tight_layout()
    return _save(fig, out / "latent_map.png")


def latent_map_numbers(ctx) -> dict[str, float]:
    """Prior mass off the codes for the 2-D variants (N(0, I) and, for the AE, the ex-post GMM)."""
    out = {}
    ev = ctx.study.eval
    for name in ("vae_2d", "ae_2d"):
        if name not in ctx.runs:
            continue
        codes = compare_lib.codes_of(ctx, name)["train"][: int(ev.num_codes)]
        key = jax.random.fold_in(ctx.key, 99)
        priors = {"N(0, I)": np.asarray(jax.random.normal(key, (int(ev.num_prior_samples), 2)))}
        if name == "ae_2d":
            for label, gen in _expost_priors(ctx, name):
                priors[label] = np.asarray(compare_lib._prior_draws(gen.model, int(ev.num_prior_samples),
                                                                    gen.variables, key))
        for prior_name, z in priors.items():
            out[f"{name}|{prior_name}"] = metrics_lib.prior_mass_off_codes(codes, z, k=int(ev.nn_k))
    return out


def dae_chain_figure(ctx, out: pathlib.Path, chains: int = 8, columns: int = 10) -> pathlib.Path | None:
    if "dae" not in ctx.runs:
        return None
    steps = int(ctx.study.chain.settings.steps)
    every = max(1, steps // columns)
    steps = every * max(1, steps // every)
    res = trained_lib.chain(ctx.runs["dae"], jax.random.fold_in(ctx.key, 7), chains, num_steps=steps, keep_every=every)
    traj = np.asarray(res["trajectory"])                                  # [T', chains, *event]
    rows = [(f"chain {i + 1}", traj[:, i]) for i in range(chains)]
    return labelled_rows_figure(out / "dae_chain.png", rows,
                                title=f"DAE Markov chains from noise: E[x | x~_t] every {every} steps (t = {every} .. {steps})")


def path_figure(ctx, rows, results, out: pathlib.Path) -> pathlib.Path | None:
    path_rows = [r for r in rows if _group(ctx.study, r.variant) == "path" and r.variant.endswith("_beta_1")]
    if len(path_rows) < 2:
        return None
    sigma = lambda r: float(r.variant.split("_")[2])
    path_rows.sort(key=sigma)
    s = np.array([sigma(r) for r in path_rows])
    get = lambda r, *keys: _get(results[r.name], *keys)
    fig = _figure(9.0, 3.4)
    ax = fig.add_subplot(1, 2, 1)
    for keys, label, style in ((("elbo", "mean"), "ELBO", "o-"), (("log_px", "mean"), "log p(x) (IS)", "s-"),
                               (("reconstruction", "mean"), "log p(x | z = E_q[z|x])", "^-")):
        ax.plot(s, [get(r, *keys) for r in path_rows], style, label=label, ms=4)
    for name, style, label in (("vae", "--", "VAE (learned σ(x)): log p(x)"), ("ae", ":", "AE: log p(x | z = f(x))")):
        key = ("log_px", "mean") if name == "vae" else ("reconstruction", "mean")
        if name in results and _get(results[name], *key) is not None:
            ax.axhline(_get(results[name], *key), ls=style, color="gray", lw=1, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("fixed encoder standard deviation σ (β = 1)")
    ax.set_ylabel("nats per test image")
    ax.legend(fontsize=7)
    ax.set_title("ELBO → −∞ as σ → 0; the AE is the limit", fontsize=9)
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.plot(s, [get(r, "samples", "fd") for r in path_rows], "o-", ms=4, label="FD of prior samples")
    ax2.set_xscale("log")
    ax2.set_xlabel("fixed encoder standard deviation σ (β = 1)")
    ax2.set_ylabel("FD (classifier features)")
    ax3 = ax2.twinx()
    ax3.plot(s, [get(r, "prior_mass_off_codes") for r in path_rows], "s--", color="C3", ms=4,
             label="prior mass off the codes")
    ax3.set_ylabel("fraction of z ~ p(z) off the codes", color="C3")
    ax3.set_ylim(0, 1)
    ax2.set_title("Sample quality along the path", fontsize=9)
    fig.tight_layout()
    return _save(fig, out / "path.png")


# --- the Markdown --------------------------------------------------------------------------------

def _get(res: dict, *keys):
    for k in keys:
        if not isinstance(res, dict) or k not in res:
            return None
        res = res[k]
    return res


def _label(ctx, name: str) -> str:
    for v in compare_lib.variants(ctx.study):
        if v.name == name:
            return v.label
    return name


def _pm(m: dict | None, digits: int = 1) -> str:
    if not m:
        return "—"
    return f"{m['mean']:.{digits}f} ± {m['stderr']:.{digits}f}"


def _num(v, fmt: str = "{:.2f}") -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def _kind(row) -> LogPx | None:
    """What the row's log p(x) is (its recipe's declaration); None for the data row."""
    return None if row.recipe is None else row.recipe_object.log_px_kind


def _fitted(row) -> bool:
    """Whether the row's recipe is a density fitted to the codes."""
    return row.recipe is not None and row.recipe_object.fitted


def _group(study, variant: str | None) -> str | None:
    return next((v.group for v in compare_lib.variants(study) if v.name == variant), None)


def _expost_priors(ctx, name: str, *, smooth: bool = False) -> list[tuple[str, object]]:
    """``[(label, generative run)]``: the 2-D variant ``name`` with each of the study's ex-post recipes
    attached.  ``smooth``: 4x the Monte Carlo draws of a density whose log p(z) is an estimate (a
    smoother map; its parameters are the same)."""
    out = []
    for recipe_name in ctx.study.expost.recipes:
        selected = compare_lib.expost_recipe(ctx.study, recipe_name)
        row = compare_lib.Row(f"{name}+{recipe_name}", "", name, selected, "")
        gen = compare_lib.generative_run(ctx, row)
        density = getattr(selected.settings, "density", None)
        if smooth and density is not None and hasattr(density, "bound_samples"):
            changed = compare_lib._changed(selected, density=dataclasses.replace(
                density, bound_samples=4 * int(density.bound_samples)))
            gen = changed.build().attach(ctx.runs[name], compare_lib.fit_of(ctx, name, selected),
                                         code_scale=compare_lib.codes_of(ctx, name)["train"].std(0))
        out.append((selected.build().trait("label"), gen))
    return out


def log_px_note(rows) -> str:
    """What every log p(x) in the table is, from the recipes' declarations: the common case (importance
    sampling with an exact p(z)), each mark († ‡) with what it means, and every other recipe's own meaning."""
    marked: dict = {}
    other: dict = {}
    for r in rows:
        recipe = r.recipe_object
        if recipe is None or recipe.trait("log_px_meaning") == trained_lib.EXACT_P_Z:
            continue
        if recipe.log_px_kind.mark:
            marked.setdefault(recipe.log_px_kind, (recipe, []))[1].append(recipe.trait("label"))
        else:
            other.setdefault(recipe.name, (recipe, []))[1].append(r.label)
    note = "Test log p(x) is an importance-sampling estimate (k samples), a stochastic lower bound on log p(x) with p(z) exact"
    parts = [f"{kind.mark} ({' and '.join(sorted(set(labels)))}) {recipe.trait('log_px_meaning')}"
             + (", not ranked against the others" if not kind.rankable else "")
             for kind, (recipe, labels) in marked.items()]
    parts += [f"{', '.join(labels)}: {recipe.trait('log_px_meaning')}" for recipe, labels in other.values()]
    if parts:
        note += ", except: " + "; ".join(parts)
    return note + (". Fit s: seconds to fit the ex-post density to the codes (the trainer's epochs and compilation; the "
                   "GMM: scikit-learn).")


def metric_table(rows, results, cmp: "Comparisons | None" = None, reference: str | None = None) -> str:
    """The table of every row: each value the mean over the study's seeds (± the images' standard error),
    the paired difference of log p(x) to the reference row, the sample metrics and the prior's holes."""
    pm = (lambda r, key: _pm(results[r.name].get(key))) if cmp is None else (lambda r, key: cmp.pm(r.name, key))
    ref_label = next((r.label for r in rows if r.name == reference), reference)
    head = (f"| model | samples drawn from | test log p(x) | Δ log p(x) vs {ref_label} (paired) | coded bits/dim "
            "(measured) | ELBO | reconstruction "
            "log p(x \\| ẑ) | FD ↓ | precision ↑ | recall ↑ | confidence | classes | prior mass off codes (held-out floor) "
            "| fit s |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        res = results[r.name]
        # every value the mean over the seeds (as the answer's), where it was measured for the first
        val = ((lambda *keys, res=res: _get(res, *keys)) if cmp is None else
               (lambda *keys, res=res, name=r.name: cmp.mean(name, *keys) if _get(res, *keys) is not None else None))
        kind = _kind(r)
        log_px = pm(r, "log_px") if "log_px" in res else ("undefined" if r.recipe is not None else "—")
        if "log_px" in res and kind is not None and kind.mark:
            log_px += " " + kind.mark
        if kind is LogPx.INTRACTABLE:
            log_px = "intractable"
        if "elbo" in res:
            elbo = pm(r, "elbo")
        elif kind in (LogPx.UNDEFINED, LogPx.INTRACTABLE):
            elbo = "undefined"  # no p(z)
        elif kind is not None and res.get("point_mass") and "prior_mass_off_codes" in res:
            elbo = "−∞"  # a point-mass q(z|x) has KL +inf to any density
        else:
            elbo = "—"
        delta = "—"
        if cmp is not None and r.name != reference and "log_px" in res and kind is not None and kind.rankable:
            delta = paired_lib.cell(cmp.pair(r.name, reference))
        elif r.name == reference:
            delta = "(reference)"
        coded = (f"{val('coded', 'net_bits_per_dim'):.4f}" if "coded" in res else
                 "cannot code" if res.get("coded_undefined") else "—")
        s = {key: val("samples", key) for key in ("fd", "precision", "recall", "confidence", "effective_classes")}
        off = val("prior_mass_off_codes")
        off_cell = "—" if off is None else f"{100 * off:.0f}% ({100 * val('held_out_codes_off_codes'):.0f}%)"
        cell = lambda text: str(text).replace("|", "\\|")
        lines.append(f"| {cell(r.label)} | {cell(r.sampled_from)} | {log_px} | {delta} | {coded} | {elbo} | "
                     f"{pm(r, 'reconstruction')} | "
                     f"{_num(s.get('fd'))} | {_num(s.get('precision'))} | {_num(s.get('recall'))} | "
                     f"{_num(s.get('confidence'))} | {_num(s.get('effective_classes'), '{:.1f}')} | {off_cell} | "
                     f"{_num(res.get('fit_seconds'), '{:.0f}')} |")
    return "\n".join(lines) + "\n\n" + log_px_note(rows)


def _pct(v: float) -> str:
    return f"{100 * v:.0f}%"


# --- comparisons: paired differences between any two rows, and the words for them ------------------------

class Comparisons:
    """Paired differences between rows, on the same test images and draws, over the study's seeds: the only
    source of the report's ranking words (:mod:`vaegen.studies.paired`).  FD and the other sample metrics
    have no paired error here; the report states their numbers without ranking words."""

    def __init__(self, ctx, rows, by_seed: dict[int, dict[str, dict]] | None):
        self.study, self.workdir = ctx.study, ctx.workdir
        self.by_seed = by_seed or {compare_lib.seeds(ctx.study)[0]: {}}
        self.seeds = list(self.by_seed)
        self.rows = {r.name: r for r in rows}
        self._values: dict = {}

    def values(self, row: str, seed: int) -> dict[str, np.ndarray]:
        if (row, seed) not in self._values:
            path = self.workdir / "rows" / f"{compare_lib.run_name(self.study, row, seed)}.values.npz"
            if path.exists():
                self._values[(row, seed)] = files_lib.load_npz(path, what="row's per-image values",
                                                               fix="measure the row again (delete it)")
            else:
                self._values[(row, seed)] = {}
        return self._values[(row, seed)]

    def pair(self, a: str, b: str, metric: str = "log_px") -> paired_lib.Paired | None:
        """The paired difference a - b of ``metric`` (None where either row lacks it)."""
        if a not in self.rows or b not in self.rows:
            return None
        va = [self.values(a, s).get(metric) for s in self.seeds]
        vb = [self.values(b, s).get(metric) for s in self.seeds]
        if any(x is None for x in va + vb) or any(x.shape != y.shape for x, y in zip(va, vb)):
            return None
        return paired_lib.paired(va, vb)

    def pm(self, row: str, key: str) -> str:
        """``mean ± standard error`` of a row's metric: the mean over seeds, and the images' standard error (the
        root mean square of the seeds')."""
        ms = [self.by_seed.get(s, {}).get(row, {}).get(key) for s in self.seeds]
        ms = [m for m in ms if m]
        if not ms:
            return "—"
        mean = float(np.mean([m["mean"] for m in ms]))
        se = float(np.sqrt(np.mean([m["stderr"] ** 2 for m in ms])))
        return f"{mean:.1f} ± {se:.1f}"

    def mean(self, row: str, *keys) -> float | None:
        """The mean over seeds of a row's measured value (e.g. ``"log_px", "mean"``)."""
        vals = [_get(self.by_seed.get(s, {}).get(row, {}), *keys) for s in self.seeds]
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else None

    def words(self, a: str, b: str, metric: str = "log_px", *, higher: str = "higher than",
              lower: str = "lower than", units: str = "nats") -> str:
        """How ``a`` compares with ``b`` on ``metric``, with the paired difference that decides it."""
        p = self.pair(a, b, metric)
        if p is None:
            return "not compared with"
        seeds = f", over {len(p.means)} seeds" if len(p.means) > 1 else ""
        diff = f"{paired_lib.number(p)} {units}, paired{seeds}"
        if p.verdict == paired_lib.BETTER:
            return f"{higher} ({diff})"
        if p.verdict == paired_lib.WORSE:
            return f"{lower} ({diff})"
        return f"not distinguishable at this budget from ({diff})"


def _adhoc(rows, variant: str):
    """The variant's row with a p(z) attached ad hoc (a recipe that fits nothing and gives a ranked log p(x))."""
    return next((r for r in rows if r.variant == variant and r.recipe is not None and not _fitted(r)
                 and _kind(r) is not None and _kind(r).rankable and not r.recipe_object.trait("as_trained")), None)


def answer(rows, results, study, cmp: Comparisons) -> str:
    """The plain-language answer, worded from the numbers: every ranking word about log p(x), the ELBO or the
    reconstruction comes from a paired difference on the same images (``better`` only where it exceeds two
    paired standard errors for every seed); sample metrics are stated, not ranked."""
    R = {r.name: results[r.name] for r in rows}
    g = lambda name, *keys: cmp.mean(name, *keys) if _get(R.get(name, {}), *keys) is not None else None
    label = {r.name: r.label for r in rows}
    paras = []
    ref = study.reference
    ae_rows = [r for r in rows if r.variant == "ae"]
    ae = next((r.name for r in ae_rows if r.recipe is not None and r.recipe_object.trait("as_trained")), None)
    adhoc = _adhoc(rows, "ae")
    vae_lp, vae_fd = g(ref, "log_px", "mean"), g(ref, "samples", "fd")
    data_fd, data_classes = g("data", "samples", "fd"), g("data", "samples", "effective_classes")
    if vae_lp is not None:
        p = (f"**Why the {label.get(ref, ref)} is generative.** A generative model is a distribution over x that can be "
             "sampled and evaluated. The VAE is one by construction: p(x) = ∫ p(z) p(x|z) dz with p(z) fixed before "
             "training, and its objective, the ELBO, is a lower bound on log p(x) whose KL term pulls the codes onto "
             f"that prior. Its test log p(x) is {vae_lp:.1f} nats (importance sampling)")
        if vae_fd is not None:
            p += f", and decoding z ~ p(z) gives images at FD {vae_fd:.2f}"
            p += f" (held-out data: {data_fd:.2f})." if data_fd is not None else "."
        off, floor = g(ref, "prior_mass_off_codes"), g(ref, "held_out_codes_off_codes")
        if off is not None:
            p += (f" {_pct(off)} of its prior's draws fall outside the codes' neighbourhoods, against {_pct(floor)} for "
                  "held-out codes, the value of this measure when prior and codes match.")
        paras.append(p)
    if ae is not None and g(ae, "reconstruction", "mean") is not None:
        p = ("**Why the AE is not.** The AE defines p(x | z) only at z = f(x): it has no p(z), hence no p(x) to "
             "evaluate and nothing to sample, and its ELBO is −∞ (the KL from a point mass to any density is +∞). "
             f"Free of the KL, its reconstruction log p(x | z = f(x)) is "
             f"{cmp.words(ae, ref, 'reconstruction')} the VAE's ({g(ae, 'reconstruction', 'mean'):.1f} vs "
             f"{_num(g(ref, 'reconstruction', 'mean'), '{:.1f}')} nats).")
        if adhoc is not None and g(adhoc.name, "log_px", "mean") is not None:
            p += (f" Attaching {adhoc.recipe_object.trait('label')} to it anyway gives a generative model whose log p(x), "
                  f"{g(adhoc.name, 'log_px', 'mean'):.1f} nats, is {cmp.words(adhoc.name, ref)} the VAE's; its samples "
                  f"score FD {_num(g(adhoc.name, 'samples', 'fd'))} (the VAE's {_num(vae_fd)}).")
            off = g(adhoc.name, "prior_mass_off_codes")
            if off is not None:
                p += (f" The reason is the mismatch between its codes and that prior: {_pct(off)} of its draws lie where "
                      f"no AE code lies (held-out codes: {_pct(g(adhoc.name, 'held_out_codes_off_codes'))}), so the "
                      "decoder is asked about regions it never saw in training.")
        paras.append(p)
    path = sorted([r for r in rows if _group(study, r.variant) == "path" and g(r.name, "elbo", "mean") is not None],
                  key=lambda r: (-float(r.variant.split("_")[-1]), -float(r.variant.split("_")[2])))
    if path:
        items = [f"σ = {r.variant.split('_')[2]}, β = {r.variant.split('_')[-1]}: ELBO {g(r.name, 'elbo', 'mean'):.1f}, "
                 f"log p(x) {g(r.name, 'log_px', 'mean'):.1f}, reconstruction {g(r.name, 'reconstruction', 'mean'):.1f}, "
                 f"FD {_num(g(r.name, 'samples', 'fd'))}" for r in path]
        p = ("**The AE is a limit of the VAE.** Fix the encoder's standard deviation at σ and shrink it: the KL to "
             "N(0, I) contains −D log σ, so the ELBO falls toward −∞, while its gradient becomes that of "
             "log p(x | z = f(x)) − β/2 ‖f(x)‖², the RAE's objective; with β → 0 as well, the plain AE's. Measured: "
             + "; ".join(items) + ".")
        if ae is not None and g(ae, "reconstruction", "mean") is not None:
            last = path[-1]
            p += (f" The reconstruction approaches the AE's ({g(ae, 'reconstruction', 'mean'):.1f}), and the prior mass "
                  f"off the codes is {_pct(g(last.name, 'prior_mass_off_codes') or 0.0)} at σ = "
                  f"{last.variant.split('_')[2]}: the codes no longer fill the prior.")
        paras.append(p)
    fitted = [r for r in ae_rows if _fitted(r) and g(r.name, "log_px", "mean") is not None]
    if fitted:
        items = []
        for r in fitted:
            item = f"{label[r.name]}: log p(x) {g(r.name, 'log_px', 'mean'):.1f} nats{_kind(r).mark}"
            if adhoc is not None and _kind(r).rankable:
                item += f", {cmp.words(r.name, adhoc.name)} {adhoc.label}"
            if g(r.name, "samples", "fd") is not None:
                item += f", FD {g(r.name, 'samples', 'fd'):.2f}"
            if g(r.name, "prior_mass_off_codes") is not None:
                item += f", {_pct(g(r.name, 'prior_mass_off_codes'))} of its draws off the codes"
            items.append(item)
        p = ("**Making an AE generative** takes a distribution over its codes, supplied after training and fitted "
             "to them: " + "; ".join(items) + ".")
        ranked = [r for r in fitted if _kind(r).rankable]
        if ranked:
            best = max(ranked, key=lambda r: g(r.name, "log_px", "mean"))
            others = [r for r in ranked if r.name != best.name]
            p += f" The highest log p(x) is {best.label}'s"
            if others:
                p += ": " + "; ".join(f"{cmp.words(best.name, r.name)} {r.label}" for r in others)
            if vae_lp is not None:
                p += f"; against the VAE it is {cmp.words(best.name, ref)} the VAE's {vae_lp:.1f}"
            p += "."
        biased = [r for r in fitted if not _kind(r).rankable]
        stds = [R[r.name].get("fit", {}).get("log_pz_mc_std") for r in biased]
        stds = [v for v in stds if v is not None]
        if biased and stds:
            v = max(stds)
            p += (f" The {' and '.join(sorted({r.recipe_object.trait('label') for r in biased}))} rows' log p(x) (‡) is not "
                  f"ranked: their p(z) is a Monte Carlo estimate of a bound with a standard deviation of up to {v:.1f} "
                  f"nats per code here, which the importance-sampling average turns into an upward bias of up to about "
                  f"Var/2 = {v * v / 2:.1f} nats.")
        paras.append(p)
    matched = [r for r in rows if r.sampled_from.endswith("matched in training") and g(r.name, "log_px", "mean") is not None]
    if matched:
        items = []
        for r in matched:
            item = f"{label[r.name]}: log p(x) {g(r.name, 'log_px', 'mean'):.1f} nats"
            if adhoc is not None:
                item += f", {cmp.words(r.name, adhoc.name)} {adhoc.label}"
            if vae_lp is not None:
                item += f" and {cmp.words(r.name, ref)} the VAE"
            if g(r.name, "prior_mass_off_codes") is not None:
                item += (f"; {_pct(g(r.name, 'prior_mass_off_codes'))} of N(0, I)'s draws off its codes (held-out codes: "
                         f"{_pct(g(r.name, 'held_out_codes_off_codes'))}), FD {_num(g(r.name, 'samples', 'fd'))}")
            items.append(item)
        paras.append("**Matching the codes to p(z) during training.** The WAE (an MMD penalty) and the AAE (a "
                     "discriminator with its own optimizer, in the same fused steps) keep the AE's point-mass encoder "
                     "but pull its codes onto N(0, I), which is then the model's prior: " + "; ".join(items) + ".")
    vq = next((r for r in rows if _group(study, r.variant) == "vq" and g(r.name, "log_px", "mean") is not None), None)
    if vq is not None:
        info = R[vq.name].get("fit", {})
        p = (f"**Discrete codes with a learned prior.** The VQ-VAE replaces each of its {info.get('num_positions', '?')} "
             f"code vectors by the nearest of {info.get('codebook_size', '?')} codebook entries and has no prior while it "
             f"trains; a prior over its codes fitted afterwards makes it generative. Its log p(x) is "
             f"{g(vq.name, 'log_px', 'mean'):.1f} nats (importance sampling over codes), its ELBO log p(c*) + "
             f"log p(x | c*) {_num(g(vq.name, 'elbo', 'mean'), '{:.1f}')}")
        if vae_lp is not None:
            p += f"; its log p(x) is {cmp.words(vq.name, ref)} the VAE's"
        p += f", at FD {_num(g(vq.name, 'samples', 'fd'))}."
        paras.append(p)
    dvae = next((r for r in rows if _group(study, r.variant) == "discrete" and g(r.name, "log_px", "mean") is not None),
                None)
    if dvae is not None:
        p = (f"**A discrete VAE against the VQ-VAE.** The {dvae.label} has the same networks and likelihood and a latent "
             f"of the same kind, {study.discrete.variables} categorical choices of {study.discrete.categories}, but its "
             "q(z|x) and p(z) are categorical distributions trained together on the ELBO, where the VQ-VAE quantizes "
             f"and gets its prior afterwards. Its log p(x) is {g(dvae.name, 'log_px', 'mean'):.1f} nats"
             + (f", ELBO {g(dvae.name, 'elbo', 'mean'):.1f}" if g(dvae.name, "elbo", "mean") is not None else ""))
        if vq is not None:
            p += f"; its log p(x) is {cmp.words(dvae.name, vq.name)} the {vq.label}'s"
        if vae_lp is not None:
            p += f", and {cmp.words(dvae.name, ref)} the VAE's"
        p += f" (FD {_num(g(dvae.name, 'samples', 'fd'))})."
        paras.append(p)
    dae = next((r for r in rows if _kind(r) is LogPx.INTRACTABLE and g(r.name, "samples", "fd") is not None), None)
    if dae is not None:
        p = (f"**{dae.label}** is generative through its corruption–reconstruction Markov chain (FD "
             f"{g(dae.name, 'samples', 'fd'):.2f} after {int(study.chain.settings.steps)} steps from noise); its p(x) "
             "is the chain's stationary distribution, with no tractable likelihood to compare")
        classes = g(dae.name, "samples", "effective_classes")
        if classes is not None and data_classes is not None and classes < 0.7 * data_classes:
            p += (f"; the chain mixes poorly: its samples spread over {classes:.1f} effective classes against the "
                  f"data's {data_classes:.1f}")
        paras.append(p + ".")
    made = next((r for r in rows if _kind(r) is LogPx.EXACT and g(r.name, "log_px", "mean") is not None), None)
    if made is not None:
        p = (f"**A latent variable is not what makes a model generative.** {made.label} has no z at all; its log p(x) is "
             f"exact, {g(made.name, 'log_px', 'mean'):.1f} nats")
        if vae_lp is not None:
            p += f", {cmp.words(made.name, ref)} the VAE's (itself an importance-sampling lower bound)"
        p += (". What makes a model generative is a normalised distribution over x that can be sampled: the VAE has "
              "one by construction, the AE only once a p(z) (or a chain) is added.")
        paras.append(p)
    verdicts = [cmp.pair(r.name, ref) for r in rows if r.name != ref and _kind(r) is not None and _kind(r).rankable]
    undecided = sum(1 for v in verdicts if v is not None and v.verdict == paired_lib.SAME)
    seeds = cmp.seeds
    paras.append(f"Every ranking word above comes from a paired difference on the same test images and importance-"
                 f"sampling draws, over {len(seeds)} training seed{'s' if len(seeds) > 1 else ''}: *better* or *worse* "
                 "only where it exceeds two paired standard errors for every seed. "
                 f"{undecided} of the {len(verdicts)} models with a ranked log p(x) are not distinguishable from the VAE "
                 "at this budget. FD and the other sample metrics have no such test here; their differences are "
                 "stated, not ranked.")
    return "\n\n".join(paras)


def paired_table(rows, cmp: Comparisons, reference: str) -> str:
    """Every row's paired differences to the reference row: mean ± paired standard error [seed spread], the
    word the report may use for log p(x), and the difference of the coded sizes (bits/dim; a file codes its
    images as one chain, so it has no per-image values and no paired error of its own)."""
    metrics = (("log_px", "Δ log p(x)"), ("elbo", "Δ ELBO"), ("reconstruction", "Δ reconstruction"))
    head = ("| model | " + " | ".join(h for _, h in metrics) + " | log p(x) against the reference | "
            "Δ coded bits/dim (first seed; no error: one chain) |")
    lines = [head, "|" + "---|" * (len(metrics) + 3)]
    coded = lambda name: _get(cmp.by_seed.get(cmp.seeds[0], {}).get(name, {}), "coded", "net_bits_per_dim")
    for r in rows:
        if r.recipe is None or r.name == reference:
            continue
        pairs = {m: cmp.pair(r.name, reference, m) for m, _ in metrics}
        if not any(pairs.values()):
            continue
        word = pairs["log_px"].verdict if pairs["log_px"] is not None and _kind(r).rankable else "—"
        cells = [paired_lib.cell(pairs[m]) for m, _ in metrics]
        a, b = coded(r.name), coded(reference)
        delta_coded = f"{a - b:+.4f}" if a is not None and b is not None else "—"
        lines.append(f"| {r.label} | " + " | ".join(cells) + f" | {word} | {delta_coded} |")
    return "\n".join(lines)


def coding_table(rows, results, cmp: Comparisons, dims: int) -> str:
    """Every row as a lossless compressor: the measured size of a file of test images (the chain's bits, less
    the initial bits paid once) beside its bounds on the same images, or why it cannot code."""
    lines = ["| model | coder | coded bits/dim (measured) | −log p(x), same images | −ELBO, same images | "
             "file bits/dim (header and initial bits included) |", "|---|---|---|---|---|---|"]
    per_dim = 1.0 / (dims * math.log(2))
    for r in rows:
        res = results.get(r.name, {})
        if r.recipe is None:
            continue
        if "coded" not in res:
            if res.get("coded_undefined"):
                lines.append(f"| {r.label} | — | cannot code: {res['coded_undefined']} | | | |")
            continue
        c = res["coded"]
        n = int(c["num_images"])
        same = {}
        for metric in ("log_px", "elbo"):
            v = cmp.values(r.name, cmp.seeds[0]).get(metric)
            same[metric] = None if v is None or v.shape[0] < n else -float(np.mean(v[:n])) * per_dim
        lines.append(f"| {r.label} | {c['coder']} | {c['net_bits_per_dim']:.4f} | {_num(same['log_px'], '{:.4f}')} | "
                     f"{_num(same['elbo'], '{:.4f}')} | {c['file_bits_per_dim']:.4f} |")
    return "\n".join(lines)


def coding_figure(rows, results, out: pathlib.Path) -> pathlib.Path | None:
    """Coded bits/dim (measured) of every row that codes, beside its −log p(x) on the whole log p(x) set."""
    coded = [(r.label, results[r.name]["coded"]["net_bits_per_dim"], results[r.name].get("log_px", {}).get("bits_per_dim"))
             for r in rows if "coded" in results.get(r.name, {})]
    if not coded:
        return None
    fig = _figure(8.0, 0.35 * len(coded) + 1.2)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(coded))
    ax.barh(y - 0.2, [c[1] for c in coded], height=0.4, label="coded bits/dim (measured file)")
    ax.barh(y + 0.2, [c[2] if c[2] is not None else 0.0 for c in coded], height=0.4,
            label="−log p(x) bits/dim (its estimate)")
    ax.set_yticks(y)
    ax.set_yticklabels([c[0] for c in coded], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("bits per dimension (lower is better)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Generative means compressive: the size of a lossless file of test images", fontsize=9)
    fig.tight_layout()
    return _save(fig, out / "coding.png")


PUBLISHED_VAE = -228.77
"""The VAE with N(0, I) under the full protocol of its reproduction row (experiments/reproduce; Fashion-MNIST,
the VampPrior protocol): how far the study's VAE is from where its model ends up."""


def convergence_table(convergence: dict[str, Any], labels: dict[str, str]) -> str:
    """How far each model was from converging when the study measured it."""
    lines = ["| model | seed | validation objective | epochs (of at most) | best epoch | early-stopped | last gain per "
             "epoch (nats) | mean gain per epoch, last 3 (nats) |", "|---|---|---|---|---|---|---|---|"]
    for name, c in convergence.items():
        lines.append(f"| {labels.get(c['variant'], c['variant'])} | {c['seed']} | {c['objective']} {c['last']:.2f} | "
                     f"{c['epochs']} ({c['max_epochs']}) | {c['best_epoch']} | {'yes' if c['stopped_early'] else 'no'} | "
                     f"{_num(c['last_gain_per_epoch'])} | {_num(c['gain_per_epoch_last_3'])} |")
    return "\n".join(lines)


def write_report(ctx, rows, results, *, timings: dict[str, float], preset: str, settings: Sequence[str],
                 overrides: Sequence[str], by_seed: dict[int, dict[str, Any]] | None = None,
                 paired: dict | None = None, convergence: dict[str, Any] | None = None,
                 skipped: Sequence[str] = (), budget_seconds: float | None = None) -> pathlib.Path:
    """Writes ``<workdir>/report/``: the figures and ``report.md`` (the answer, the metric table with every row's
    paired difference to the reference, the paired differences in full, how far each model was from
    converging, and how everything was measured)."""
    del paired   # the comparisons are recomputed from the per-image values, between any two rows
    cmp = Comparisons(ctx, rows, by_seed or {compare_lib.seeds(ctx.study)[0]: results})
    out = ctx.workdir / "report"
    out.mkdir(parents=True, exist_ok=True)
    figs = samples_figures(ctx, rows, results, out)
    for name, fn in (("reconstructions", lambda: reconstructions_figure(ctx, out)),
                     ("interpolations", lambda: interpolations_figure(ctx, out)),
                     ("dae_chain", lambda: dae_chain_figure(ctx, out)),
                     ("path", lambda: path_figure(ctx, rows, results, out))):
        p = fn()
        if p is not None:
            figs[name] = p
    numbers_2d = latent_map_numbers(ctx)
    p = latent_map_figure(ctx, out, numbers_2d)
    if p is not None:
        figs["latent_map"] = p

    study = ctx.study
    spec = ctx.base_spec
    encoder, decoder = spec.inference.encoder.settings, spec.model.decoder.settings
    machine = compare_lib.machine()
    cmd = f"vaegen compare --preset {preset} --workdir {ctx.workdir}" + "".join(f" --set {s}" for s in settings) + "".join(
        f" --config.{o}" for o in overrides)
    lines = [
        "# Why is a VAE generative and an AE not? — vaegen compare",
        "",
        f"`{cmd}` — {spec.data.name}, binarization `{spec.data.binarization}`; every model: encoder "
        f"{tuple(encoder.hidden)} {encoder.activation}, decoder {tuple(decoder.hidden)} "
        f"{decoder.activation}, latent dimension {spec.model.latent_dim}, {spec.model.likelihood.name} likelihood, "
        f"{study.epochs} epochs of {spec.optim.optimizer} (lr {spec.optim.learning_rate}, batch {spec.train.batch_size}), the same trainer. "
        f"MADE: masked hidden layers {tuple(study.made.settings.hidden)}, no latent variable.",
        "",
    ]
    if "headline" in figs:
        lines += ["![samples of each model](headline.png)", ""]
    seeds = cmp.seeds
    if skipped:
        lines += [f"**Run within a budget of {budget_seconds:.0f} s: skipped** " + ", ".join(skipped) + ". Seeds reported: "
                  + ", ".join(map(str, seeds)) + ".", ""]
    lines += ["## The answer", "", answer(rows, results, study, cmp), "", "## Metrics", "",
              metric_table(rows, results, cmp, study.reference), ""]
    n_test = int(ctx.x_test.shape[0])
    n_bounds = int(ctx.bounds_images.shape[0])
    over = (f"the mean over {len(seeds)} training seeds ({', '.join(map(str, seeds))}) of each seed's mean, ± the images' "
            "standard error" if len(seeds) > 1 else "± standard error over the images")
    lines += [
        f"Test log p(x) on the first {n_test} test images, ELBO and reconstruction on the first {n_bounds}: nats per "
        f"image, {over}. Δ log p(x): the paired difference to {_label(ctx, study.reference)} on the same images and the same "
        "importance-sampling draws (common random numbers), ± its paired standard error"
        + (" [and the spread of the per-seed differences]" if len(seeds) > 1 else "") + ". "
        f"log p(x) is estimated by importance sampling with k = {int(study.eval.k)} — a stochastic lower bound — with "
        "q(z|x) as proposal for the VAEs, and for autoencoders (whose q is a point mass, no proposal) a scale mixture of "
        "Gaussians centred at the code, N(f(x), (s·σ_codes)²) with s ∈ {0.01, 0.03, 0.1, 0.3, 1} (vaegen.blocks.posteriors.CodeProposal); "
        "MADE's is exact; the DAE's Markov chain has no tractable density. ẑ = E_q[z|x] (f(x) for autoencoders).",
        "",
        f"Sample metrics on {int(study.eval.num_samples)} samples per row against {int(study.eval.num_samples)} test "
        f"images, in the 128-d feature space of a classifier vaegen trains on the same data (test accuracy "
        f"{ctx.space.info.get('test_accuracy', float('nan')):.3f}; recipe in `vaegen.studies.metrics`). **FD is a dataset-specific "
        "Fréchet distance, not FID**: comparable only within this table; the data row is its finite-sample floor. "
        f"Precision/recall: k-NN manifolds, k = {int(study.eval.nn_k)} (Kynkäänniemi et al. 2019). Confidence: the "
        "classifier's mean max-probability; classes: exp(entropy) of its predicted labels.",
        "",
        f"Prior mass off codes: the fraction of {int(study.eval.num_prior_samples)} draws z ~ p(z) outside every training "
        f"code's {int(study.eval.nn_k)}-NN ball ({int(study.eval.num_codes)} codes: draws z ~ q(z|x) for VAEs, f(x) for "
        "autoencoders); in parentheses the same for held-out test codes, i.e. its value when p(z) matches the codes.",
        "",
    ]
    captions = {
        "samples": "Samples of every row (E[x|z] for latent-variable models, p(x_d = 1 | x_<d) along each MADE sample, "
                   "the last reconstruction mean of the DAE chain).",
        "latent_map": "2-D latent variants: codes of test images over the density samples are drawn from.",
        "reconstructions": "Reconstructions.",
        "interpolations": "Interpolations in code space.",
        "dae_chain": "The DAE's Markov chain.",
        "path": "The fixed-variance path from the VAE to the AE.",
    }
    if any("coded" in results.get(r.name, {}) or results.get(r.name, {}).get("coded_undefined") for r in rows):
        n_coded = int(study.eval.coded_examples)
        lines += ["## Generative means compressive", "",
                  f"Each model with a p(x) (its first training seed's run) codes the first {n_coded} test images "
                  "losslessly into one file "
                  "(`vaegen.compress`: bits back for a q(z|x) with a density or a discrete q(z|x), the quantized code for a point mass, the "
                  "discrete codes, pixel by pixel for MADE; docs/compression.md): the coded bits/dim are "
                  "the chain's, less the initial bits the first image pays once; the bounds are the row's own "
                  "estimates on the same images (bits back codes at the −ELBO, the quantized code above −log p(x)). "
                  "A model without a p(x) cannot code, and the line says why.", "",
                  coding_table(rows, results, cmp, int(np.prod(ctx.x_test.shape[1:]))), ""]
        p = coding_figure(rows, results, out)
        if p is not None:
            lines += [f"![coded sizes]({p.name})", ""]
    lines += ["## Paired differences", "",
              f"Each row minus {_label(ctx, study.reference)}, per image, on the same test images and importance-sampling draws: the "
              "mean ± its paired standard error" + (", [the standard deviation of the per-seed differences]"
                                                   if len(seeds) > 1 else "") +
              ". *better*/*worse* where the difference exceeds two paired standard errors for every seed, else *not "
              "distinguishable at this budget*.", "", paired_table(rows, cmp, study.reference), ""]
    if convergence:
        labels = {v.name: v.label for v in compare_lib.variants(study)}
        lines += ["## How far each model was from converging", "",
                  "From each run's metrics.jsonl: the validation objective it was trained on (nats per image), the "
                  "epochs it ran, its best epoch (the parameters measured, with early stopping), and how much that "
                  "objective still gained per epoch at the end.", "", convergence_table(convergence, labels), ""]
        vae = convergence.get(study.reference)
        if vae is not None and ctx.base_spec.data.name == "fashion_mnist" and "log_px" in results.get(study.reference, {}):
            lp = cmp.mean(study.reference, "log_px", "mean")
            lines += [f"The {labels.get(study.reference, study.reference)}'s test log p(x) here, {lp:.2f} nats, is "
                      f"{PUBLISHED_VAE - lp:.2f} nats below {PUBLISHED_VAE:.2f}, the same model under the full protocol of "
                      "its reproduction row (experiments/reproduce: up to 2000 epochs with early stopping after 50, "
                      "k = 5000).", ""]
    lines += ["## Figures", ""]
    for name in ("samples", "latent_map", "path", "reconstructions", "interpolations", "dae_chain"):
        if name in figs:
            lines += [f"**{captions[name]}**", "", f"![{name}]({figs[name].name})", ""]
    if numbers_2d:
        lines += ["2-D variants, prior mass off the codes: " + ", ".join(
            f"{k.replace('|', ' with ')}: {100 * v:.0f}%" for k, v in numbers_2d.items()) + ".", ""]
    lines += ["## Run", "",
              f"Machine: {machine['cpu_count']} CPUs ({machine['processor']}), JAX backend `{machine['jax_backend']}`, "
              f"jax {machine['jax']}.", "",
              "| model | parameters (generative / total) | training seconds |", "|---|---|---|"]
    for name, run in ctx.runs.items():
        np_ = compare_lib.num_params(run)
        params = f"{np_['generative']:,} / {np_['total']:,}"
        lines.append(f"| {_label(ctx, name)} | {params} | {compare_lib.train_seconds(run.workdir):.0f} |")
    lines += ["", "Seconds: " + ", ".join(f"{label} {timings[k]:.0f}" for k, label in (
        ("classifier", "feature classifier (this invocation; 0 when reused)"),
        ("evaluation", "evaluating every row (when computed)"), ("report", "figures")) if k in timings) + ".", ""]
    path = out / "report.md"
    files_lib.write_atomic(path, "\n".join(lines) + "\n", kind="table")
    return path
