"""The quality table in Markdown, built from bench_quality.py's result files (one JSON per pair, model, steps, seed).

    python benchmarks/quality_table.py                                   # benchmarks/results_quality, 1000 steps
    python benchmarks/quality_table.py --results_dir benchmarks/results_quality/ablation --steps 500 --per_seed

Per pair and model: BLEU and chrF as the mean over seeds with the lowest and highest, the training loss at fixed
steps (mean over seeds), steps per second and the seeds found. With --per_seed, one row per run instead. Nothing
is trained here.

Then each model against `marian` on the same pair: its mean BLEU over Marian's, and its lowest BLEU over Marian's at
the same seed, with the bars the README's claims hold them to (mean at least Marian's; no seed below 0.9x Marian's
at that seed, for the Trainer runs). Steps per second depend on whatever else the machine ran meanwhile: they are
not a speed comparison (docs/performance.md has that).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

REPO = Path(__file__).resolve().parent.parent


def read_runs(results_dir: Path, steps: int) -> list[dict]:
    runs = []
    for path in sorted(results_dir.glob(f"*/*_{steps}steps_seed*.json")):
        run = json.loads(path.read_text())
        run["loss"] = {int(step): value for step, value in run.get("loss", {}).items()}
        run.setdefault("pair", path.parent.name)
        runs.append(run)
    return runs


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


def table(runs: list[dict], loss_steps: list[int], per_seed: bool) -> str:
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
        rows = []
        for (pair, model), group in sorted(groups.items()):
            group.sort(key=lambda r: r["seed"])
            rows.append(
                [pair, f"`{model}`", spread([r["bleu"] for r in group]), spread([r["chrf"] for r in group]),
                 *loss_cells(group, loss_steps), f"{mean(r['steps_per_second'] for r in group):.2f}",
                 ", ".join(str(r["seed"]) for r in group)]
            )  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


SEED_FLOOR = 0.9  # no seed below this times Marian's BLEU at the same seed


def against_marian(runs: list[dict]) -> str:
    """Per pair, each model's BLEU against `marian`'s: the ratio of the means, and the lowest ratio at a shared seed."""
    by_key: dict[tuple[str, str], dict[int, float]] = {}
    for run in runs:
        by_key.setdefault((run["pair"], run["model"]), {})[run["seed"]] = run["bleu"]
    lines = [
        "| pair | model | mean BLEU / Marian's (at least 1) | lowest seed / Marian's at that seed (at least 0.9) |",
        "|---|---|---|---|",
    ]
    for (pair, model), bleu in sorted(by_key.items()):
        marian = by_key.get((pair, "marian"))
        if model == "marian" or not marian:
            continue
        ratio = mean(bleu.values()) / mean(marian.values())
        cells = [pair, f"`{model}`", f"{ratio:.2f} ({'holds' if ratio >= 1 else 'short'})"]
        shared = sorted(set(bleu) & set(marian))
        if shared:
            seed = min(shared, key=lambda s: bleu[s] / marian[s])
            lowest = bleu[seed] / marian[seed]
            cells.append(f"{lowest:.2f}, seed {seed} ({'holds' if lowest >= SEED_FLOOR else 'short'})")
        else:
            cells.append("no shared seed")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results_quality"))
    parser.add_argument("--steps", type=int, default=1000, help="The runs' length (part of each file name).")
    parser.add_argument("--loss_steps", type=int, nargs="+", default=None, help="Default: 300, 400, 500 and --steps.")
    parser.add_argument("--per_seed", action="store_true", help="One row per run instead of the mean over seeds.")
    args = parser.parse_args(argv)
    loss_steps = args.loss_steps or sorted({step for step in (300, 400, 500, args.steps) if step <= args.steps})
    runs = read_runs(Path(args.results_dir), args.steps)
    if not runs:
        raise SystemExit(f"No result files for {args.steps} steps under {args.results_dir}: run bench_quality.py first.")
    text = table(runs, loss_steps, args.per_seed)
    signature = runs[0].get("bleu_signature")
    comparison = against_marian(runs)
    if comparison:
        text += "\n\n" + comparison
    print(text)
    if signature:
        print(f"\nsacreBLEU {signature}; {runs[0].get('chrf_signature', '')}")
    return text


if __name__ == "__main__":
    main()
