"""The quality table in Markdown, built from bench_quality.py's result files (one JSON per pair, model, steps, seed).

    python benchmarks/quality_table.py                                   # benchmarks/results_quality, 1000 steps
    python benchmarks/quality_table.py --results_dir benchmarks/results_quality/ablation --steps 500 --per_seed
    python benchmarks/quality_table.py --readme README.md                # also writes the table into the README
    python benchmarks/quality_table.py --plot docs/figures/quality_loss_curves.png   # and draws the loss curves
    python benchmarks/quality_table.py --results_dir benchmarks/results_quality benchmarks/results_quality/ablation \
        --seeds 43 --plot docs/figures/quality_ablation_seed43.png      # the table's runs beside the ablation's

Per pair and model: BLEU and chrF as the mean over seeds with the lowest and highest, the training loss at fixed
steps (mean over seeds), steps per second and the seeds found. With --per_seed, one row per run instead. Nothing
is trained here.

Then each model against `marian` on the same pair: its mean BLEU over Marian's, and its lowest BLEU over Marian's at
the same seed, with the bars the README's claims hold them to: mean at least Marian's; for the Trainer runs also no
seed below 0.9x Marian's at that seed (the `hf-vanilla-train` rows, a user's run of the command line, are held to the
mean only). Steps per second depend on whatever else the machine ran meanwhile: they are not a speed comparison
(docs/performance.md has that). `--plot` draws every run's training loss against the step, a panel per pair, a
colour per model and a line style per seed (needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from statistics import mean

REPO = Path(__file__).resolve().parent.parent
# The README's table sits between these two lines; --readme rewrites what is between them.
README_BEGIN = "<!-- quality-table: written by benchmarks/quality_table.py --readme README.md -->"
README_END = "<!-- quality-table: end -->"


def default_loss_steps(steps: int) -> list[int]:
    """The steps whose training loss the table gives unless told: 300, 400, 500 and the last, within the run."""
    return sorted({step for step in (300, 400, 500, steps) if step <= steps})


def read_runs(results_dir: Path, steps: int) -> list[dict]:
    runs = []
    for path in sorted(results_dir.glob(f"*/*_{steps}steps_seed*.json")):
        run = json.loads(path.read_text())
        run["loss"] = {int(step): value for step, value in run.get("loss", {}).items()}
        run.setdefault("pair", path.parent.name)
        run["model"] = run["model"].strip()  # the command line's rows read "hf-vanilla-train " when given no option
        runs.append(run)
    return runs


def read_folders(folders: list[Path], steps: int) -> list[dict]:
    """The runs of every folder; where two folders hold the same pair, model and seed (a default's rows before and
    after a change), each such run's model is named with its folder, so that neither is averaged into the other."""
    tagged = [(folder, run) for folder in folders for run in read_runs(folder, steps)]
    counts = Counter((run["pair"], run["model"], run["seed"]) for _, run in tagged)
    for folder, run in tagged:
        if counts[run["pair"], run["model"], run["seed"]] > 1:
            run["model"] = f"{run['model']} ({folder.name})"
    return [run for _, run in tagged]


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{mean(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def loss_cells(runs: list[dict], loss_steps: list[int]) -> list[str]:
    cells = []
    for step in loss_steps:
        values = [run["loss"][step] for run in runs if step in run["loss"]]
        cells.append(f"{mean(values):.2f}" if values else "")
    return cells


def table(runs: list[dict], loss_steps: list[int], per_seed: bool, ratios: dict | None = None) -> str:
    """With `ratios` (from marian_ratios; means only), a last column gives each model's BLEU over Marian's."""
    loss_header = [f"loss @{step}" for step in loss_steps]
    if per_seed:
        header = ["pair", "model", "seed", "BLEU", "chrF", *loss_header, "steps/s"]
        rows = [
            [run["pair"], f"`{run['model']}`", str(run["seed"]), f"{run['bleu']:.2f}", f"{run['chrf']:.2f}",
             *loss_cells([run], loss_steps), f"{run['steps_per_second']:.2f}"]
            for run in sorted(runs, key=lambda r: (r["pair"], r["model"], r["seed"]))
        ]  # fmt: skip
    else:
        groups: dict[tuple[str, str], list[dict]] = {}
        for run in runs:
            groups.setdefault((run["pair"], run["model"]), []).append(run)
        header = ["pair", "model", "BLEU", "chrF", *loss_header, "steps/s", "seeds"]
        if ratios is not None:
            header.append("BLEU / Marian's: mean; lowest seed")
        rows = []
        for (pair, model), group in sorted(groups.items()):
            group.sort(key=lambda r: r["seed"])
            rows.append(
                [pair, f"`{model}`", spread([r["bleu"] for r in group]), spread([r["chrf"] for r in group]),
                 *loss_cells(group, loss_steps), f"{mean(r['steps_per_second'] for r in group):.2f}",
                 ", ".join(str(r["seed"]) for r in group)]
            )  # fmt: skip
            if ratios is not None:
                ratio, lowest, seed = ratios.get((pair, model), (None, None, None))
                cell = "" if ratio is None else f"{ratio:.2f}"
                rows[-1].append(cell + (f"; {lowest:.2f} (seed {seed})" if seed is not None else ""))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


SEED_FLOOR = 0.9  # no seed below this times Marian's BLEU at the same seed (Trainer runs)


def held_to_each_seed(model: str) -> bool:
    """The Trainer runs are; a run of the command line (`hf-vanilla-train ...`) is held to Marian's mean only."""
    return not model.startswith("hf-vanilla-train")


def _over(bleu: float, marian: float) -> float:
    """bleu / marian, where a Marian run that scored 0 counts as beaten by anything above 0."""
    return bleu / marian if marian else (float("inf") if bleu else 1.0)


def marian_ratios(runs: list[dict]) -> dict[tuple[str, str], tuple[float, float | None, int | None]]:
    """Per (pair, model) other than `marian`: its mean BLEU over Marian's on the pair, and its lowest BLEU over
    Marian's at a shared seed with that seed (None where they share no seed, or the model is not held to each seed)."""
    by_key: dict[tuple[str, str], dict[int, float]] = {}
    for run in runs:
        by_key.setdefault((run["pair"], run["model"]), {})[run["seed"]] = run["bleu"]
    ratios = {}
    for (pair, model), bleu in by_key.items():
        marian = by_key.get((pair, "marian"))
        if model == "marian" or not marian:
            continue
        shared = sorted(set(bleu) & set(marian)) if held_to_each_seed(model) else []
        seed = min(shared, key=lambda s: _over(bleu[s], marian[s])) if shared else None
        lowest = _over(bleu[seed], marian[seed]) if shared else None
        ratios[pair, model] = (_over(mean(bleu.values()), mean(marian.values())), lowest, seed)
    return ratios


def against_marian(runs: list[dict]) -> str:
    """The table of `marian_ratios`, each ratio marked against the bar it is held to."""
    lines = [
        "| pair | model | mean BLEU / Marian's (at least 1) | lowest seed / Marian's at that seed (at least 0.9) |",
        "|---|---|---|---|",
    ]
    for (pair, model), (ratio, lowest, seed) in sorted(marian_ratios(runs).items()):
        cells = [pair, f"`{model}`", f"{ratio:.2f} ({'holds' if ratio >= 1 else 'short'})"]
        if not held_to_each_seed(model):
            cells.append("(held to the mean)")
        elif seed is None:
            cells.append("no shared seed")
        else:
            cells.append(f"{lowest:.2f}, seed {seed} ({'holds' if lowest >= SEED_FLOOR else 'short'})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def render(runs: list[dict], loss_steps: list[int], per_seed: bool, compact: bool = False) -> str:
    """The table, the comparison with Marian and the scores' signatures, as printed; `compact` (the README's) puts
    the comparison in a column of the table."""
    if compact:
        text = table(runs, loss_steps, per_seed=False, ratios=marian_ratios(runs))
    else:
        text = table(runs, loss_steps, per_seed)
        comparison = against_marian(runs)
        if comparison:
            text += "\n\n" + comparison
    signature = runs[0].get("bleu_signature")
    if signature:
        text += f"\n\nsacreBLEU {signature}; {runs[0].get('chrf_signature', '')}"
    return text


def plot_losses(runs: list[dict], path: Path) -> Path:
    """Each run's logged training loss against the step: a panel per pair, a colour per model (`vanilla` first,
    `marian` second, then the others by name) and a line style per seed."""
    from hf_vanilla_transformer import visualization as viz

    pairs = sorted({run["pair"] for run in runs})
    models = sorted({run["model"] for run in runs}, key=lambda m: ({"vanilla": 0, "marian": 1}.get(m, 2), m))
    seeds = sorted({run["seed"] for run in runs})
    styles = ("-", "--", ":", "-.")
    figure = viz.new_figure(4.6 * len(pairs), 3.6)
    for axes, pair in zip(figure.subplots(1, len(pairs), squeeze=False)[0], pairs):
        for run in sorted((r for r in runs if r["pair"] == pair), key=lambda r: (models.index(r["model"]), r["seed"])):
            steps = sorted(run["loss"])
            axes.plot(
                steps, [run["loss"][step] for step in steps], color=f"C{models.index(run['model'])}",
                linestyle=styles[seeds.index(run["seed"]) % len(styles)], label=f"{run['model']}, seed {run['seed']}",
            )  # fmt: skip
        axes.set_title(pair, fontsize=10)
        axes.set_xlabel("step")
        axes.set_ylabel("training loss (label-smoothed)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    return viz.save_figure(figure, path)


def readme_block(readme_text: str) -> tuple[int, int]:
    """Where the table's text starts and ends in the README (between the two marker lines)."""
    begin, end = readme_text.find(README_BEGIN), readme_text.find(README_END)
    if begin < 0 or end < begin:
        raise SystemExit(f"The README has no quality table block: add the lines\n{README_BEGIN}\n{README_END}")
    return begin + len(README_BEGIN) + 1, end


def write_readme(path: Path, text: str) -> None:
    readme = path.read_text(encoding="utf-8")
    start, end = readme_block(readme)
    path.write_text(readme[:start] + text + "\n" + readme[end:], encoding="utf-8")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--results_dir", nargs="+", default=[str(REPO / "benchmarks" / "results_quality")],
        help="One or more folders of result files (the runs of all of them are read together).",
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="Only the runs of these seeds.")
    parser.add_argument("--steps", type=int, default=1000, help="The runs' length (part of each file name).")
    parser.add_argument("--loss_steps", type=int, nargs="+", default=None, help="Default: 300, 400, 500 and --steps.")
    parser.add_argument("--per_seed", action="store_true", help="One row per run instead of the mean over seeds.")
    parser.add_argument("--readme", type=Path, help="Also write the table into this README, between its marker lines.")
    parser.add_argument("--plot", type=Path, help="Also draw the runs' loss curves into this PNG file.")
    args = parser.parse_args(argv)
    loss_steps = args.loss_steps or default_loss_steps(args.steps)
    runs = read_folders([Path(folder) for folder in args.results_dir], args.steps)
    runs = [run for run in runs if args.seeds is None or run["seed"] in args.seeds]
    if not runs:
        where = " or ".join(args.results_dir) + (f" for seeds {args.seeds}" if args.seeds else "")
        raise SystemExit(f"No result files for {args.steps} steps under {where}: run bench_quality.py first.")
    text = render(runs, loss_steps, args.per_seed)
    print(text)
    if args.readme is not None:
        write_readme(args.readme, render(runs, loss_steps, per_seed=False, compact=True))
    if args.plot is not None:
        print(f"Loss curves: {plot_losses(runs, args.plot)}")
    return text


if __name__ == "__main__":
    main()
