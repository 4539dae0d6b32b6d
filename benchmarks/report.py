"""The quality benchmark's report, from its CSV only: plot, tables, verdicts, the README's table.

:func:`write_report` rebuilds ``<csv stem>.png`` (Figure-2-style: mean true MSE
vs measurement level, error bars = standard error over images) and
``<csv stem>_table.md`` (mean +- std per grid point, ILO/CSGM ratios, plain
verdicts on the classical baselines, PSNR/SSIM, the README's summary table,
compute per task) from the rows :mod:`benchmarks.quality` writes. Run it with
``python -m benchmarks.quality --report-only``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from benchmarks.baselines import baseline_name
from benchmarks.common import read_rows

#: Display names and styles of the methods in plots and tables.
LABELS = {
    "csgm": "CSGM", "pulse": "PULSE-style", "ilo": "ILO", "ilo_plus": "ILO+",
    "ilo_plus_eq": "ILO+ at CSGM's compute", "ilo_best3": "ILO best-of-3 (secondary)",
    "biharmonic": "biharmonic", "bm3d": "BM3D", "bicubic": "bicubic", "tv_lsq": "TV least squares",
}
_STYLE = {
    "csgm": dict(color="tab:blue", marker="o"),
    "pulse": dict(color="tab:orange", marker="s"),
    "ilo": dict(color="tab:red", marker="^"),
    "ilo_plus": dict(color="tab:purple", marker="*"),
    "ilo_plus_eq": dict(color="tab:purple", marker="x", linestyle=":", alpha=0.7),
    "ilo_best3": dict(color="tab:red", marker="v", linestyle="--", alpha=0.6),
    "classical": dict(color="tab:green", marker="D"),
}
TITLES = {
    "inpainting_random": "Inpainting, random mask",
    "inpainting_box": "Inpainting, box mask (mouth)",
    "denoising": "Denoising",
    "superres": "Super-resolution",
    "compressed_sensing": "Compressed sensing (partial circulant)",
}
#: The tasks in table and plot order: those of :data:`benchmarks.quality.TASKS`, in its order.
TASK_ORDER = tuple(TITLES)
XLABELS = {
    "inpainting_random": "observed pixels (%)",
    "denoising": "noise sigma (0..255 scale)",
    "superres": "downsampling factor",
    "compressed_sensing": "measurements m/n (%)",
}


def _level_value(task: str, label: str) -> float:
    if task == "inpainting_box":
        return 0.0
    v = float(label)
    return 100 * v if task in ("inpainting_random", "compressed_sensing") else v


def _stats(values: List[float]) -> Dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"n": n, "mean": mean, "std": std, "sem": std / math.sqrt(n)}


def summarize(rows: List[Dict[str, str]], metric: str = "true_mse") -> Dict[Tuple[str, str, str], Dict[str, float]]:
    """``(task, level, method) -> {n, mean, std, sem}`` of ``metric`` over images.

    Classical baselines appear under the method ``classical`` (their own name
    is in ``baselines.BASELINE_NAMES``).
    """
    groups: Dict[Tuple[str, str, str], List[float]] = {}
    for r in rows:
        if r.get(metric, "") in ("", None):
            continue
        method = "classical" if r["protocol"] == "baseline" else r["method"]
        groups.setdefault((r["task"], r["level"], method), []).append(float(r[metric]))
    return {k: _stats(v) for k, v in groups.items()}


def _baseline_of(task: str) -> str:
    return LABELS[baseline_name(task)]


def required_point(task: str, label: str) -> bool:
    """Whether the issue's ILO <= 0.5 x CSGM target applies to this grid point."""
    if task == "inpainting_box":
        return True
    v = float(label)
    return {
        "inpainting_random": v >= 0.05, "compressed_sensing": v >= 0.05,
        "denoising": v <= 100, "superres": v <= 8,
    }[task]


def _levels(rows: List[Dict[str, str]], task: str) -> List[str]:
    labels = {r["level"] for r in rows if r["task"] == task}
    return sorted(labels, key=lambda lab: _level_value(task, lab))


def plot_results(rows: List[Dict[str, str]], path: Path, title: str = "") -> Path:
    """Figure-2-style plot: true MSE vs measurement level, one line per method, SEM error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    stats = summarize(rows)
    pasted = summarize(rows, "true_mse_pasted")
    tasks = [t for t in TASK_ORDER if any(r["task"] == t for r in rows)]
    panels = [(t, stats, TITLES[t]) for t in tasks]
    if "inpainting_random" in tasks:
        # The classical baseline keeps the observed pixels; compare with the outputs that do too.
        merged = dict(stats)
        merged.update({k: v for k, v in pasted.items() if k[0] == "inpainting_random"})
        panels.append(("inpainting_random", merged, "Inpainting, random mask, observed pixels pasted"))
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    axes = axes.ravel()
    for ax, (task, st_, panel_title) in zip(axes, panels):
        levels = _levels(rows, task)
        methods = [m for m in ("csgm", "pulse", "ilo", "ilo_plus", "ilo_plus_eq", "ilo_best3", "classical")
                   if any((task, lab, m) in st_ for lab in levels)]
        if task == "inpainting_box":
            for i, m in enumerate(methods):
                s = st_.get((task, levels[0], m))
                if s:
                    st = _STYLE[m]
                    ax.bar(i, s["mean"], yerr=s["sem"], color=st["color"], alpha=st.get("alpha", 0.9), capsize=4)
            ax.set_xticks(range(len(methods)))
            ax.set_xticklabels([_baseline_of(task) if m == "classical" else LABELS[m].split(" (")[0]
                                for m in methods], rotation=30, ha="right", fontsize=8)
        else:
            for m in methods:
                # A zero error (a fully observed image returned as is) has no place on a log axis.
                pts = [(lab, st_[(task, lab, m)]) for lab in levels
                       if (task, lab, m) in st_ and st_[(task, lab, m)]["mean"] > 0]
                xs = [_level_value(task, lab) for lab, _ in pts]
                ys = [s["mean"] for _, s in pts]
                err = [min(s["sem"], 0.999 * s["mean"]) for _, s in pts]
                label = _baseline_of(task) if m == "classical" else LABELS[m]
                ax.errorbar(xs, ys, yerr=[err, [s["sem"] for _, s in pts]], label=label, capsize=3,
                            markersize=5, **_STYLE[m])
            ax.set_xscale("log", base=2 if task == "superres" else 10)
            ax.set_xticks(sorted(set(_level_value(task, lab) for lab in levels)))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel(XLABELS[task])
            ax.legend(fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("true MSE ([-1, 1] scale)")
        ax.set_title(panel_title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _cell(s: Optional[Dict[str, float]], digits: int = 4) -> str:
    return "" if s is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def _verdict(task: str, ilo: Optional[Dict[str, float]], ilo_pasted: Optional[Dict[str, float]],
             classical: Optional[Dict[str, float]], who: str = "ILO") -> str:
    """Plain words: who wins between ``who`` (ILO or ILO+) and the classical baseline, by how much (mean true MSE)."""
    ref = ilo_pasted if ilo_pasted is not None else ilo
    if ref is None or classical is None:
        return ""
    name = _baseline_of(task)
    what = f"{who} (pasted)" if ilo_pasted is not None else who
    if max(classical["mean"], ref["mean"]) < 1e-8:
        return "tie: both return the (fully observed) image"
    if classical["mean"] < ref["mean"]:
        return f"**{name} wins**: its MSE is {classical['mean'] / max(ref['mean'], 1e-12):.2f}x {what}'s"
    return f"{who} wins: {name}'s MSE is {classical['mean'] / max(ref['mean'], 1e-12):.2f}x {what}'s"


def _ratio(task: str, lab: str, num: Optional[Dict[str, float]], den: Optional[Dict[str, float]]) -> str:
    """``num / den`` of the means, starred where the <= 0.5 target applies (and "(miss)" above it)."""
    if not (num and den):
        return ""
    r = num["mean"] / den["mean"]
    star = "*" if required_point(task, lab) else ""
    return f"{r:.2f}{star}" + (" (miss)" if star and r > 0.5 else "")


def level_text(task: str, lab: str) -> str:
    """A grid point as the tables show it: ``5%``, ``sigma 100``, ``x8`` (the box: its label)."""
    if task in ("inpainting_random", "compressed_sensing"):
        return f"{100 * float(lab):g}%"
    if task == "superres":
        return f"x{float(lab):g}"
    if task == "denoising":
        return f"sigma {float(lab):g}"
    return lab


def _has(rows: List[Dict[str, str]], method: str) -> bool:
    return any(r["method"] == method for r in rows)


def results_table(rows: List[Dict[str, str]]) -> str:
    """Markdown tables of mean true MSE (and PSNR/SSIM, ST-LPIPS, LPIPS) per task and grid point."""
    mse = summarize(rows)
    pasted = summarize(rows, "true_mse_pasted")
    psnr = summarize(rows, "psnr")
    ssim = summarize(rows, "ssim")
    lp = summarize(rows, "lpips")
    st = summarize(rows, "stlpips")
    n_images = len({r["image"] for r in rows})
    plus, plus_eq = _has(rows, "ilo_plus"), _has(rows, "ilo_plus_eq")
    out = [
        f"True MSE against the never-observed image, on the [-1, 1] scale (the paper's metric), "
        f"mean ± std over {n_images} images. Lower is better. ILO/CSGM is the ratio of the means "
        f"(target <= 0.50 where marked *). ILO best-of-3 is the secondary protocol (the best of "
        f"radius x0.5/x1/x2 per image, chosen by measurement loss). For inpainting, \"pasted\" puts "
        f"the observed pixels back into the output (the classical baseline keeps them too), and the "
        f"verdict compares it with the baseline.",
        "",
    ]
    if plus:
        out += ["ILO+ is the task's config with its overlay `configs/plus/<task>.yaml` (tuned on the tuning "
                "faces by `benchmarks/tune.py --plus`) at the config's steps per problem. Restarts cost "
                "steps: \"ILO+ at CSGM's compute\" scales every stage so that restarts x steps equal CSGM's "
                "steps" + ("" if plus_eq else " (no ILO+ config here runs restarts, so that column is ILO+ "
                           "itself and is not repeated)") + ". An ST-LPIPS term costs wall time, not steps: "
                "see the compute table.", ""]
    for task in [t for t in TASK_ORDER if any(r["task"] == t for r in rows)]:
        inp = task.startswith("inpainting")
        base = _baseline_of(task)
        head = ["level", "CSGM", "PULSE-style", "ILO", "ILO/CSGM"]
        if inp:
            head.append("ILO (pasted)")
        if plus:
            head += ["ILO+", "ILO+/CSGM"] + (["ILO+ at CSGM's compute"] if plus_eq else [])
        head += [base, "ILO best-of-3", "classical vs ILO"] + (["classical vs ILO+"] if plus else [])
        out += [f"### {TITLES[task]}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for lab in _levels(rows, task):
            g = lambda m, d=mse: d.get((task, lab, m))  # noqa: E731
            cells = [level_text(task, lab), _cell(g("csgm")), _cell(g("pulse")), _cell(g("ilo")),
                     _ratio(task, lab, g("ilo"), g("csgm"))]
            if inp:
                cells.append(_cell(pasted.get((task, lab, "ilo"))))
            if plus:
                cells += [_cell(g("ilo_plus")), _ratio(task, lab, g("ilo_plus"), g("csgm"))]
                if plus_eq:
                    # Without restarts ILO+ already spends CSGM's steps: the column is ILO+ itself.
                    eq = g("ilo_plus_eq")
                    cells.append(_cell(eq) if eq else ("= ILO+ (no restarts)" if g("ilo_plus") else ""))
            cells += [_cell(g("classical")), _cell(g("ilo_best3")),
                      _verdict(task, g("ilo"), pasted.get((task, lab, "ilo")) if inp else None, g("classical"))]
            if plus:
                cells.append(_verdict(task, g("ilo_plus"), pasted.get((task, lab, "ilo_plus")) if inp else None,
                                      g("classical"), "ILO+"))
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    methods = ["csgm", "pulse", "ilo"] + (["ilo_plus"] if plus else []) + ["ilo_best3", "classical"]
    names = [LABELS[m].split(" (")[0] if m != "classical" else "classical" for m in methods]
    head = "| task | level | " + " | ".join(names) + " |"
    rule = "|" + "---|" * (len(methods) + 2)
    out += ["### PSNR (dB) / SSIM, mean over images", "", head, rule]
    for task in [t for t in TASK_ORDER if any(r["task"] == t for r in rows)]:
        for lab in _levels(rows, task):
            cells = [task, lab]
            for m in methods:
                a, b = psnr.get((task, lab, m)), ssim.get((task, lab, m))
                cells.append("" if a is None else f"{a['mean']:.2f} / {b['mean']:.3f}")
            out.append("| " + " | ".join(cells) + " |")
    out.append("")
    for stats, title in (
        (st, "ST-LPIPS (AlexNet; shift-tolerant LPIPS, not the paper's LPIPS)"),
        (lp, "LPIPS (AlexNet)"),
    ):
        if not stats:
            continue
        out += [f"### {title}, mean ± std over images (lower is better; empty: rows written before the column)",
                "", head, rule]
        for task in [t for t in TASK_ORDER if any(r["task"] == t for r in rows)]:
            for lab in _levels(rows, task):
                cells = [task, lab] + [_cell(stats.get((task, lab, m))) for m in methods]
                out.append("| " + " | ".join(cells) + " |")
        out.append("")
    if not st:
        out.append("ST-LPIPS: not measured (the CSV's stlpips column is empty: rows written before it, or "
                   "the stlpips-pytorch package, which ships its weights, is not installed).")
    if not lp:
        out.append("LPIPS: not measured (the AlexNet backbone weights of LPIPS are not on this machine; "
                   "the CSV column is empty).")
    out.append("")
    return "\n".join(out)


def timing_table(rows: List[Dict[str, str]]) -> str:
    """Markdown table of compute per task: wall seconds summed over grid points, per method."""
    seen: Dict[Tuple[str, str, str], float] = {}
    for r in rows:
        if r["protocol"] == "secondary" or not r.get("seconds"):
            continue
        seen.setdefault((r["task"], r["level"], r["method"]), float(r["seconds"]))
    tasks = [t for t in TASK_ORDER if any(k[0] == t for k in seen)]
    methods = sorted({k[2] for k in seen}, key=lambda m: (m not in LABELS, list(LABELS).index(m) if m in LABELS else 0, m))
    out = ["| task | " + " | ".join(methods) + " | total (min) |", "|" + "---|" * (len(methods) + 2)]
    for t in tasks:
        per = {m: sum(v for k, v in seen.items() if k[0] == t and k[2] == m) for m in methods}
        out.append(f"| {t} | " + " | ".join(f"{per[m] / 60:.1f}" for m in methods) + f" | {sum(per.values()) / 60:.1f} |")
    return "\n".join(out) + "\n"


#: Level labels of the README's summary table, per task.
_SUMMARY_LEVEL = {
    "inpainting_random": lambda lab: f"inpainting, {100 * float(lab):g}% observed",
    "inpainting_box": lambda lab: "inpainting, box over the mouth",
    "denoising": lambda lab: f"denoising, sigma {float(lab):g}",
    "superres": lambda lab: f"super-resolution x{float(lab):g}",
    "compressed_sensing": lambda lab: f"CS (partial circulant), m/n {100 * float(lab):g}%",
}


def _wins(task: str, lab: str, method: str, mse: Dict, pasted: Dict) -> Optional[bool]:
    """Whether ``method`` (pasted for inpainting) has a lower mean true MSE than the classical baseline."""
    cls = mse.get((task, lab, "classical"))
    ref = (pasted if task.startswith("inpainting") else mse).get((task, lab, method))
    if cls is None or ref is None:
        return None
    return ref["mean"] < cls["mean"]


def summary_table(rows: List[Dict[str, str]]) -> str:
    """The README's table: mean true MSE of CSGM, ILO, ILO+ (when run) and the classical baseline per grid point.

    Fully observed inpainting (100%) is left out (every method that keeps the
    observed pixels is exact there). For inpainting the verdict compares the
    baseline with the output with the observed pixels pasted back. Below the
    table, a line counts the grid points where ILO and ILO+ beat the baseline.
    """
    mse = summarize(rows)
    pasted = summarize(rows, "true_mse_pasted")
    plus = _has(rows, "ilo_plus")
    best = "ilo_plus" if plus else "ilo"
    who = "ILO+" if plus else "ILO"
    if plus:
        out = ["| task, level | CSGM | ILO | ILO+ | ILO / CSGM | ILO+ / CSGM | classical | classical vs ILO+ |",
               "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    else:
        out = ["| task, level | CSGM | ILO | ILO / CSGM | classical | classical vs ILO |",
               "| --- | --- | --- | --- | --- | --- |"]
    counts = {"ilo": [0, 0], "ilo_plus": [0, 0]}
    for task in [t for t in TASK_ORDER if any(r["task"] == t for r in rows)]:
        first = True
        for lab in _levels(rows, task):
            if task == "inpainting_random" and float(lab) >= 1.0:
                continue
            csgm, ilo, cls = mse.get((task, lab, "csgm")), mse.get((task, lab, "ilo")), mse.get((task, lab, "classical"))
            if not (csgm and ilo and cls):
                continue
            top = mse.get((task, lab, best))
            for m in counts:
                w = _wins(task, lab, m, mse, pasted)
                if w is not None:
                    counts[m][0] += int(w)
                    counts[m][1] += 1
            name = _baseline_of(task)
            # The verdict is ILO+'s where it ran, else ILO's (a grid run in parts: ILO+ not yet there).
            judged, judged_who = (best, who) if top else ("ilo", "ILO")
            ref = (pasted if task.startswith("inpainting") else mse).get((task, lab, judged))
            rel = cls["mean"] / max(ref["mean"], 1e-12)
            verdict = (f"**classical wins** ({rel:.2f}x)" if cls["mean"] < ref["mean"]
                       else f"{judged_who} wins ({name} {rel:.2f}x)")
            classical = f"{name} {cls['mean']:.4f}" if first else f"{cls['mean']:.4f}"

            def ratio(m: Optional[Dict[str, float]]) -> str:
                if m is None:
                    return "not run"
                r = m["mean"] / csgm["mean"]
                return f"{r:.2f}" + (" (target 0.5 missed)" if required_point(task, lab) and r > 0.5 else "")

            cells = [_SUMMARY_LEVEL[task](lab), f"{csgm['mean']:.4f}", f"{ilo['mean']:.4f}"]
            cells += [f"{top['mean']:.4f}" if top else "not run", ratio(ilo), ratio(top)] if plus else [ratio(ilo)]
            cells += [classical, verdict]
            out.append("| " + " | ".join(cells) + " |")
            first = False
    text = "\n".join(out) + "\n"
    wins = [f"{LABELS[m]} beats the classical baseline at {k} of {n} grid points" for m, (k, n) in counts.items() if n]
    if wins:
        text += "\n" + "; ".join(wins) + " (inpainting: with the observed pixels pasted back).\n"
    return text


def write_report(csv_path: Path, out: Path) -> List[Path]:
    """Rebuild the plot and the markdown tables from the CSV; returns the files written.

    Raises:
        FileNotFoundError: if the CSV does not exist.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"no results at {csv_path}; run the benchmark first (without --report-only)")
    rows = read_rows(csv_path)
    if not rows:
        raise ValueError(f"{csv_path} holds no result row")
    stem = csv_path.stem
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gens = sorted({r["generator"] for r in rows})
    n_images = len({r["image"] for r in rows})
    png = plot_results(rows, out / f"{stem}.png",
                       title=f"{', '.join(gens)} on {n_images} images: mean true MSE, error bars = standard error over images")
    table = out / f"{stem}_table.md"
    configs = ", ".join(sorted({r["config"] for r in rows if r["protocol"] != "baseline"}))
    table.write_text(
        f"Configs (file@fingerprint): {configs}.\n\n" + results_table(rows)
        + "\n### Summary (the README's table; inpainting verdicts against ILO with the observed pixels pasted back)\n\n"
        + summary_table(rows)
        + "\n### Compute (wall minutes, per method, summed over grid points)\n\n" + timing_table(rows))
    return [png, table]
