"""The guide's figures, drawn by the code they describe (the build runs this; nothing here is drawn by hand).

* `pipeline.png` — the stages (`STAGES`: each a `lavit` command, what it reads and what it writes).
* `gate_schedule.png` — γ(t) and the attention bias ln γ(t) it adds, from `lavit.models.gating.GateSchedule`.
* `attention_heatmaps.png` — where the toy teacher looks while it answers (A_traj of the answer-producing
  queries, extracted by `lavit extract`'s code) and where a trained student's latent tokens look
  (`LavitStudent.attention_from`), on toy-world test scenes.
* `audit.png` — an audit table (`lavit audit`'s `table`) as a plot: accuracy with its interval per intervention.

The student is the committed positive control of the latent-usage audit (`tests/toyworld/controls/latent_only`:
a toy LaViT student trained with the readout and the question gated shut, so its answer sees the image only
through latents 1..K−1; `tests/toyworld/build_controls.py` rebuilds it). `python docs/gen/figures.py OUT` writes
the PNGs into OUT.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lavit.models.gating import GateSchedule  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONTROL_STUDENT = REPO / "tests" / "toyworld" / "controls" / "latent_only"
HEATMAP_SCENES = 3
AUDIT_SCENES = 48  # paired test scenes: 24 questions, two scenes each with different answers


@dataclass(frozen=True)
class Stage:
    command: str  # a `lavit` subcommand
    reads: str
    does: str
    writes: str


STAGES = (
    Stage("extract", "samples (JSONL or Visual-CoT)\n+ images", "teacher answers + one probe pass",
          "signal store\nA_traj, V_sem, S_focus"),
    Stage("filter", "signal store", "teacher correct, text-only wrong,\nS_focus ≥ 0.2",
          "LaViT-SFT set"),
    Stage("train", "LaViT-SFT set + base student", "L_ntp + λ (L_concept + L_traj),\ngate γ(t)",
          "student with K latent tokens\n(a plain HF checkpoint)"),
    Stage("eval", "student + benchmark\n(MMVP, BLINK, V*, MMStar)", "a named protocol",
          "predictions, accuracy [95% CI]"),
    Stage("audit", "student + benchmark\nor samples", "zero / random / swap the latents",
          "does the answer read them?"),
    Stage("analyze", "teacher + students + samples", "attention maps, S_focus, KL", "Perception-Gap figures"),
)


def pipeline_figure(path: Path, stages: tuple[Stage, ...] = STAGES) -> None:
    """One row per stage: what it reads → `lavit COMMAND` (what it does) → what it writes."""
    fig, ax = plt.subplots(figsize=(11, 0.95 * len(stages) + 0.4))
    ax.set_xlim(0, 11)
    ax.set_ylim(-0.6, len(stages) - 0.4)
    ax.invert_yaxis()
    ax.axis("off")
    boxes = {"reads": (0.1, 3.0, "#eef2fb", "#2f4b8a"), "command": (3.6, 3.6, "#2f4b8a", "white"),
             "writes": (7.8, 3.1, "#eef7ee", "#2c6b2f")}
    for row, stage in enumerate(stages):
        texts = {"reads": stage.reads, "command": f"lavit {stage.command}\n{stage.does}", "writes": stage.writes}
        for key, (x, width, face, ink) in boxes.items():
            ax.add_patch(matplotlib.patches.FancyBboxPatch((x, row - 0.36), width, 0.72,
                                                           boxstyle="round,pad=0.02,rounding_size=0.12",
                                                           facecolor=face, edgecolor="#2f4b8a", lw=1.2))
            ax.text(x + width / 2, row, texts[key], ha="center", va="center", fontsize=8.5, color=ink,
                    fontweight="bold" if key == "command" else "normal")
        for start, end in ((3.1, 3.6), (7.2, 7.8)):
            ax.annotate("", xy=(end, row), xytext=(start, row), arrowprops={"arrowstyle": "->", "lw": 1.4})
    ax.set_title("The pipeline: one lavit command per stage; each reads what the one above writes\n"
                 "(eval, audit and analyze all read the trained student) and records its settings and results as JSON",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def gate_figure(path: Path, warmup_steps: int = 400, steps: int = 1000) -> None:
    """γ(t) of every gate variant over a run of `steps` steps with T_w = `warmup_steps` (Table A1: 400 of 1000),
    and the bias ln γ the gated queries add to their logits on image keys."""
    variants = {"cosine (eq. 5, default)": GateSchedule("cosine", warmup_steps=warmup_steps),
                "hard (w/o curriculum gate)": GateSchedule("hard", warmup_steps=warmup_steps),
                "none (single stage)": GateSchedule("none", warmup_steps=warmup_steps),
                "cosine, gate_final=0.1": GateSchedule("cosine", warmup_steps=warmup_steps, final=0.1)}
    t = np.arange(steps + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for (label, schedule), style in zip(variants.items(), ("-", "--", ":", "-.")):
        gamma = np.array([schedule.gamma(int(s)) for s in t])
        axes[0].plot(t, gamma, style, lw=2, label=label)
        with np.errstate(divide="ignore"):  # the hard gate's γ = 0 is a bias of −∞, off the plot
            axes[1].plot(t, np.log(gamma), style, lw=2, label=label)
    for ax in axes:
        ax.axvline(warmup_steps, color="grey", lw=0.8)
        ax.set_xlabel("training step t")
        ax.grid(alpha=0.3)
    axes[0].text(warmup_steps, 0.5, "  T_w", color="grey", va="center")
    axes[0].set_ylabel("γ(t)")
    axes[0].set_title("the gate: how much of the image the answer may see", fontsize=9)
    axes[1].set_ylabel("ln γ(t)")
    axes[1].set_title("the bias ln γ on (gated query, image key) logits\n(γ = 0 is −∞: the image is cut off)",
                      fontsize=9)
    axes[1].set_ylim(-16, 1)
    axes[0].legend(fontsize=7.5, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def heatmap_figure(path: Path, image: list[np.ndarray], boxes: list[list[float]], titles: list[str],
                   maps: dict[str, list[np.ndarray]]) -> None:
    """Rows: scenes; columns: the scene with its box, then each named map ([h, w], a distribution over the image's
    merged tokens) over the scene, in units of the uniform share, one colour scale per row."""
    names = list(maps)
    fig, axes = plt.subplots(len(image), len(names) + 1, figsize=(2.5 * (len(names) + 1), 2.6 * len(image)),
                             squeeze=False)
    for row, scene in enumerate(image):
        x1, y1, x2, y2 = boxes[row]
        relative = {n: maps[n][row] * maps[n][row].size for n in names}  # 1 = uniform
        vmax = max(float(r.max()) for r in relative.values())
        axes[row, 0].imshow(scene)
        axes[row, 0].set_title(titles[row], fontsize=7.5)
        for col, name in enumerate(names, start=1):
            ax = axes[row, col]
            ax.imshow(scene)
            im = ax.imshow(relative[name], cmap="inferno", alpha=0.65, vmin=0.0, vmax=vmax, interpolation="nearest",
                           extent=(0, scene.shape[1], scene.shape[0], 0))
            ax.set_title(f"{name}\npeak {float(relative[name].max()):.1f}× uniform", fontsize=7.5)
        for ax in axes[row]:
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", lw=1.5))
            ax.axis("off")
        fig.colorbar(im, ax=axes[row, 1:].tolist(), fraction=0.025, pad=0.01, label="× uniform")
    fig.suptitle("Where the teacher looks while answering vs where the student's latent tokens look "
                 "(green box: the object asked about)", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def audit_figure(path: Path, table: list[dict], title: str) -> None:
    """An audit's `table` (`lavit audit`'s audit.json): accuracy with its Wilson 95 % interval per intervention,
    the forced (reference) run as a line; each bar says Δ vs forced, McNemar p and the flip rate."""
    rows = [r for r in table if r["applicable"] and r.get("accuracy") is not None]
    fig, ax = plt.subplots(figsize=(8.5, 0.5 * len(rows) + 1.3))
    y = np.arange(len(rows))
    accuracy = np.array([100 * r["accuracy"] for r in rows])
    low = accuracy - np.array([100 * r["ci95"][0] for r in rows])
    high = np.array([100 * r["ci95"][1] for r in rows]) - accuracy
    colours = ["#2f4b8a" if r["intervention"] == "forced" else "#c0504d" if r["vs_forced"]["mcnemar_p"] < 0.05
               else "#9aa5b8" for r in rows]
    ax.barh(y, accuracy, color=colours, xerr=[low, high], capsize=3)
    forced = next(100 * r["accuracy"] for r in rows if r["intervention"] == "forced")
    ax.axvline(forced, color="#2f4b8a", lw=1, ls="--")
    for i, r in enumerate(rows):
        if r["intervention"] == "forced":
            note = "reference"
        else:
            d = r["vs_forced"]
            note = f"Δ {100 * d['difference']:+.1f}, p = {d['mcnemar_p']:.2g}, flips {100 * r['flip_rate']:.0f}%"
        ax.text(101, i, note, va="center", fontsize=8)
    ax.set_yticks(y, [r["intervention"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%), Wilson 95% interval; red: McNemar p < 0.05 against forced")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def toy_scenes(directory: Path, n: int, *, pairs: bool) -> Path:
    """`n` scenes of the committed toy world's test stream (world 0), as lavit samples; returns the JSONL path."""
    from lavit.toyworld.artifacts import ARTIFACTS_DIR
    from lavit.toyworld.world import WorldConfig, write_split

    world = WorldConfig(**json.loads((ARTIFACTS_DIR / "artifacts.json").read_text())["world"])
    return write_split(directory, "test", n, world_seed=0, cfg=world, pairs=pairs)


def teacher_and_student_maps(split: Path, scratch: Path) -> dict:
    """For each scene of `split`: the toy teacher's A_traj (answer-producing queries, normalised) and the control
    student's latent maps (latents 1..K−1 averaged, and the readout, latent K), each [h, w] on its own grid."""
    import torch

    from lavit.analysis.latent_maps import build_probe_set
    from lavit.data.signal_store import read_store
    from lavit.demo import boxed_samples
    from lavit.models.checkpoint import load_for_inference, read_lavit_meta
    from lavit.models.lavit_student import LavitStudent, latent_image_distribution
    from lavit.teacher.extract_config import ExtractConfig
    from lavit.teacher.extractor import run_extract
    from lavit.toyworld.artifacts import ARTIFACTS_DIR

    run_extract(ExtractConfig(samples=str(split), image_root=str(split.parent / "images"), out=str(scratch / "signals"),
                              teacher=str(ARTIFACTS_DIR / "teacher"), queries="answer", max_new_tokens=4))
    rows = {r["id"]: r for r in read_store(scratch / "signals").to_pylist()}
    samples = boxed_samples(split, HEATMAP_SCENES)
    meta = read_lavit_meta(str(CONTROL_STUDENT))
    model, processor = load_for_inference(str(CONTROL_STUDENT))
    student = LavitStudent(model, processor.tokenizer.convert_tokens_to_ids(meta["latent_tokens"])).eval()
    probe = build_probe_set(processor, samples, meta["latent_tokens"], system_prompt=None)
    with torch.no_grad():
        maps, _ = student.attention_from(probe.batch, probe.batch["latent_positions"])  # [B, K, S]
    dist = latent_image_distribution(maps, probe.batch["image_index"], probe.batch["image_valid"])  # [B, K, N]
    merge = processor.image_processor.merge_size
    out = {"images": [], "boxes": [], "titles": [], "teacher": [], "block": [], "readout": []}
    for b, sample in enumerate(samples):
        row = rows[sample.id]
        t, h, w = row["a_traj_grid"]
        teacher = np.asarray(row["a_traj"], dtype=np.float64).reshape(t, h, w).mean(0)
        frames, patches_h, patches_w = (int(x) for x in probe.batch["image_grid_thw"][b])
        sh, sw = patches_h // merge, patches_w // merge
        cells = dist[b, :, : frames * sh * sw].double().numpy().reshape(-1, frames, sh, sw).mean(1)  # [K, h, w]
        out["images"].append(np.asarray(sample.image))
        out["boxes"].append(sample.bbox)
        out["titles"].append(f"{sample.question}\nanswer: {sample.answer}; teacher: {row['teacher_answer']}")
        out["teacher"].append(teacher / teacher.sum())
        out["block"].append(cells[:-1].mean(0))
        out["readout"].append(cells[-1])
    return out


def write_figures(out: Path) -> dict[str, Path]:
    """Every figure of the guide into `out`: {file name: path}."""
    from lavit.toyworld.latent_audit import audit_student

    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("pipeline.png", "gate_schedule.png", "attention_heatmaps.png",
                                           "audit.png")}
    pipeline_figure(paths["pipeline.png"])
    gate_figure(paths["gate_schedule.png"])
    with tempfile.TemporaryDirectory(prefix="lavit-figures-") as tmp:
        scratch = Path(tmp)
        maps = teacher_and_student_maps(toy_scenes(scratch / "scenes", HEATMAP_SCENES, pairs=False), scratch)
        heatmap_figure(paths["attention_heatmaps.png"], maps["images"], maps["boxes"], maps["titles"],
                       {"teacher (A_traj while answering)": maps["teacher"],
                        "student: latents 1..K−1": maps["block"], "student: readout (latent K)": maps["readout"]})
        audit = audit_student(CONTROL_STUDENT, toy_scenes(scratch / "pairs", AUDIT_SCENES, pairs=True))
        audit_figure(paths["audit.png"], audit["table"],
                     f"lavit audit of the positive control (answer sees the image only through its latents), "
                     f"{audit['n_asked']} paired toy scenes")
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python docs/gen/figures.py OUT_DIR")
    for name, written in write_figures(Path(sys.argv[1])).items():
        print(written)
