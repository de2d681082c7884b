"""PNG figures of the analysis: Fig. 2 (accuracy vs S_focus), Fig. 3 (perception gap), Fig. 4 (entropy),
Fig. 5 (attention heatmaps over the image)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lavit.analysis.collect import CATEGORIES  # noqa: E402
from lavit.data.samples import open_rgb  # noqa: E402

ORDER = ("base", "naive_sft", "lavit", "teacher")


def _ordered(names) -> list[str]:
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def fig2(path: Path, per_model: dict) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name in _ordered(per_model):
        curve = per_model[name].get("accuracy_by_s_focus")
        if not curve:
            continue
        pts = [(p["threshold"], p["accuracy"]) for p in curve if p["accuracy"] is not None and p["n"] >= 5]
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=name)
    ax.set_xlabel("S_focus threshold (samples with S_focus ≥ t)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy vs visual focus (Fig. 2)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fig3(path: Path, gap: dict) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    names = _ordered(gap)
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(CATEGORIES))
    for i, name in enumerate(names):
        for ax, key in zip(axes, ("kl_by_category", "cosine_distance_by_category")):
            values = [gap[name][key][c] if gap[name][key][c] is not None else np.nan for c in CATEGORIES]
            ax.bar(x + i * width, values, width, label=name)
    for ax, title in zip(axes, ("KL(teacher ‖ model) of token attention maps", "cosine distance of hidden states")):
        ax.set_xticks(x + width * (len(names) - 1) / 2, CATEGORIES)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.suptitle("Perception gap by token category (Fig. 3)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fig4(path: Path, per_model: dict) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    values = {n: [v["entropy"] for v in per_model[n]["per_sample"].values()] for n in _ordered(per_model)}
    lo = min(min(v) for v in values.values())
    hi = max(max(v) for v in values.values())
    bins = np.linspace(lo, hi + 1e-9, 25)
    for name, v in values.items():
        ax.hist(v, bins=bins, alpha=0.45, label=f"{name} (mean {np.mean(v):.2f})")
    ax.set_xlabel("attention entropy H (eq. 10, nats)")
    ax.set_ylabel("samples")
    ax.set_title("Attention entropy distribution (Fig. 4)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fig5(path: Path, answer_maps: dict, records, sizes, image_root: Path, grids: dict, count: int) -> None:
    """Heatmaps in units of 'times the uniform share', one colour scale per row, so a flat map looks flat; each
    model's map on its own grid (named in its title), stretched over the whole image."""
    names = _ordered(answer_maps)
    count = min(count, len(records))
    fig, axes = plt.subplots(count, len(names) + 1, figsize=(2.4 * (len(names) + 1), 2.6 * count), squeeze=False)
    for row in range(count):
        rec = records[row]
        image = np.asarray(open_rgb(image_root / rec.image))
        x1, y1, x2, y2 = rec.bbox
        axes[row, 0].imshow(image)
        axes[row, 0].add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", lw=2))
        axes[row, 0].set_title(f"{rec.question}\n→ {rec.answer}", fontsize=7)
        relative = {n: answer_maps[n][row] * answer_maps[n][row].size for n in names}  # 1 = uniform
        vmax = max(float(r.max()) for r in relative.values())
        for col, name in enumerate(names, start=1):
            t, h, w = grids[name][row]
            grid = relative[name].reshape(t, h, w).mean(0)
            ax = axes[row, col]
            ax.imshow(image)
            im = ax.imshow(grid, cmap="inferno", alpha=0.6, vmin=0.0, vmax=vmax, interpolation="nearest",
                           extent=(0, sizes[row][0], sizes[row][1], 0))
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", lw=1))
            ax.set_title(f"{name}, {h}×{w} grid\npeak {float(grid.max()):.1f}× uniform", fontsize=7)
        fig.colorbar(im, ax=axes[row, 1:].tolist(), fraction=0.02, pad=0.01, label="× uniform")
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("Answer-token attention over the image (Fig. 5); green box = ground truth", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_all(out: Path, per_model: dict, gap: dict, answer_maps: dict, records, sizes, image_root: Path,
              grids: dict, heatmaps: int) -> dict[str, str]:
    paths = {"fig2": out / "fig2_accuracy_vs_s_focus.png", "fig3": out / "fig3_perception_gap.png",
             "fig4": out / "fig4_attention_entropy.png", "fig5": out / "fig5_heatmaps.png"}
    written = {}
    if any(per_model[n].get("accuracy_by_s_focus") for n in per_model):
        fig2(paths["fig2"], per_model)
        written["fig2"] = paths["fig2"].name
    if gap:
        fig3(paths["fig3"], gap)
        written["fig3"] = paths["fig3"].name
    fig4(paths["fig4"], per_model)
    written["fig4"] = paths["fig4"].name
    if heatmaps:
        fig5(paths["fig5"], answer_maps, records, sizes, image_root, grids, heatmaps)
        written["fig5"] = paths["fig5"].name
    return written


def dynamics_figure(path: Path, runs: dict, title: str) -> None:
    """Training dynamics, one line per seed: γ(t), the first answer token's attention mass on the image,
    the latent tokens' S_focus, and the answer's teacher-forced accuracy on the probe batch."""
    panels = (("gamma", "gate γ(t)"), ("answer_image_mass", "answer → image attention mass"),
              ("latent_s_focus", "latent-token S_focus"), ("answer_accuracy", "answer accuracy (probe batch)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2))
    for seed, records in sorted(runs.items()):
        steps = [r["step"] for r in records]
        for ax, (key, _) in zip(axes, panels):
            values = [np.nan if r[key] is None else r[key] for r in records]
            ax.plot(steps, values, label=f"seed {seed}", lw=1.2)
    for ax, (key, label) in zip(axes, panels):
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)  # one scale for every student, so their figures compare
        ax.grid(alpha=0.3)
        if all(r[key] is None for records in runs.values() for r in records):
            ax.text(0.5, 0.5, "no latent tokens", ha="center", va="center", transform=ax.transAxes, color="grey")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
