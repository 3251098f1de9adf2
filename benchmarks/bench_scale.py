"""How long `hf-vanilla-train` takes to reach its first training step on a large corpus, stage by stage, and its peak
memory: corpora of N pairs built from the gettext catalogues (benchmarks/build_corpus.py), loaded from a file (the
default) or streamed (--streaming), each run in a fresh process with an empty datasets cache.

    python benchmarks/bench_scale.py --pairs 200000 1000000 4500000 --modes normal streaming

Stages: imports, loading the file, training the BPE tokenizer, tokenizing and filtering, setting up the Trainer and
the batch sampler, and the first batch (for a stream, reading, tokenizing and packing its first window happens
there); "to step 1" is from the start of the process until step 1 begins with its batch in hand, and "step 1" the
step itself (the model's work, not the data path's). Each stage shows its wall time and, in brackets, the CPU seconds
it took (the process and its finished workers), which do not depend on what else the machine runs. Peak memory is
the largest resident set of the training process (what /usr/bin/time reports), and the largest proportional set size
of it and its tokenizing workers together (pages they share counted once). Results go to --output as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

MODEL = "d_model=64,d_ff=128,num_heads=2,encoder_layers=1,decoder_layers=1"
STAGES = (
    ("start", "imports"),
    ("load", "loading the data"),
    ("tokenizer", "tokenizer training"),
    ("preprocess", "tokenizing and filtering"),
    ("trainer", "Trainer and sampler setup"),
    ("batch", "first batch"),
)


def train_arguments(corpus: Path, lang: str, output_dir: Path, streaming: bool, extra: list[str]) -> list[str]:
    arguments = [
        "--train_file", str(corpus), "--source_lang", lang, "--target_lang", "en",
        "--output_dir", str(output_dir), "--config_overrides", MODEL,
        "--max_tokens_per_batch", "4096", "--max_steps", "1", "--save_strategy", "no", "--eval_strategy", "no",
        "--report_to", "none", "--logging_steps", "1",
    ]  # fmt: skip
    return arguments + (["--streaming"] if streaming else []) + extra


def child(arguments: list[str], marks_path: str) -> None:
    """Run hf-vanilla-train's run() in this process, writing the time of each stage's end to `marks_path`."""
    marks, cpu = {}, {}

    def mark(name: str) -> None:
        if name not in marks:
            marks[name] = time.time()
            own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[name] = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
            Path(marks_path).write_text(json.dumps({**marks, "cpu": cpu}))

    import hf_vanilla_transformer.cli.train as entry

    mark("start")

    def timed(name: str, function):
        def wrapper(*args, **kwargs):
            result = function(*args, **kwargs)
            mark(name)
            return result

        return wrapper

    entry.load_data = timed("load", entry.load_data)
    entry.build_tokenizer = timed("tokenizer", entry.build_tokenizer)
    entry.preprocess_dataset = timed("preprocess", entry.preprocess_dataset)

    class TimedTrainer(entry.VanillaSeq2SeqTrainer):
        def get_train_dataloader(self):
            loader = super().get_train_dataloader()
            mark("trainer")
            return loader

        def training_step(self, model, inputs, num_items_in_batch=None):
            mark("batch")
            loss = super().training_step(model, inputs, num_items_in_batch)
            mark("step")
            marks["batch_pairs"] = int(inputs["input_ids"].shape[0])
            marks["batch_source_tokens"] = int(inputs["input_ids"].numel())
            Path(marks_path).write_text(json.dumps({**marks, "cpu": cpu}))
            return loss

    entry.VanillaSeq2SeqTrainer = TimedTrainer
    entry.run(arguments)
    marks["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(marks_path).write_text(json.dumps({**marks, "cpu": cpu}))


def tree_memory(pid: int) -> int:
    """The proportional set size of a process and its children: pages they share count once, split among them."""
    import psutil

    try:
        process = psutil.Process(pid)
        processes = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for each in processes:
        try:
            total += each.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def measure(corpus: Path, lang: str, streaming: bool, extra: list[str], work: Path) -> dict:
    """One cold run: a fresh datasets cache and output folder."""
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    marks_path = run_dir / "marks.json"
    env = dict(os.environ, HF_DATASETS_CACHE=str(run_dir / "datasets"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    arguments = train_arguments(corpus, lang, run_dir / "out", streaming, extra)
    command = [sys.executable, __file__, "--child", json.dumps(arguments), str(marks_path)]
    started = time.time()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample():
        while process.poll() is None:
            peak[0] = max(peak[0], tree_memory(process.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.communicate()[0]
    sampler.join()
    if process.returncode != 0:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise RuntimeError(f"hf-vanilla-train failed ({process.returncode}):\n{output[-4000:]}")
    marks = json.loads(marks_path.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    seconds, cpu_seconds, previous, previous_cpu = {}, {}, started, 0.0
    for name, _ in STAGES:
        if name in marks:
            seconds[name] = round(marks[name] - previous, 2)
            cpu_seconds[name] = round(marks["cpu"][name] - previous_cpu, 2)
            previous, previous_cpu = marks[name], marks["cpu"][name]
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,  # of this process and its finished workers: what the stage cost, whatever the load
        "to_step_1": round(marks["batch"] - started, 2),
        "first_step": round(marks["step"] - marks["batch"], 2),
        "max_rss_mb": round(marks["max_rss_mb"]),
        "peak_tree_pss_mb": round(peak[0] / 2**20),
        "first_batch": {"pairs": marks.get("batch_pairs"), "padded_source_tokens": marks.get("batch_source_tokens")},
        "log_tail": output[-3000:],
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]), sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[200_000, 1_000_000, 4_500_000])
    parser.add_argument("--modes", nargs="+", choices=("normal", "streaming"), default=["normal", "streaming"])
    parser.add_argument("--lang", default="es", help="catalogue language paired with English")
    parser.add_argument("--locale_root", type=Path, default=Path("/usr/share/locale"), help="where the catalogues are")
    parser.add_argument("--work_dir", type=Path, default=Path(tempfile.gettempdir()) / "bench-scale",
                        help="where corpora (kept for the next run) and each run's cache go")  # fmt: skip
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results_scale.json")
    parser.add_argument("extra", nargs="*", help="more hf-vanilla-train arguments, after --")
    args = parser.parse_args()
    from build_corpus import write_corpus

    args.work_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "command": " ".join(sys.argv),
        "runs": [],
    }
    columns = ["pairs", "mode", *(title for _, title in STAGES), "to step 1", "step 1", "max RSS", "with workers (PSS)"]
    print(f"| {' | '.join(columns)} |\n|{'---|' * len(columns)}", flush=True)
    for pairs in args.pairs:
        corpus = args.work_dir / f"corpus-{args.lang}-{pairs}.jsonl"
        if not corpus.exists():
            write_corpus(corpus, args.lang, pairs, locale_root=args.locale_root)
        for mode in args.modes:
            result = measure(corpus, args.lang, mode == "streaming", args.extra, args.work_dir)
            kept = {key: value for key, value in result.items() if key != "log_tail"}
            # What else ran: on a busy machine the wall times are upper bounds, the CPU seconds still hold.
            kept["load_average_after"] = [round(load, 2) for load in os.getloadavg()]
            results["runs"].append({"pairs": pairs, "mode": mode, **kept})
            wall, cpu = result["seconds"], result["cpu_seconds"]
            stages = [f"{wall[name]:.1f} s ({cpu[name]:.0f})" if name in wall else "–" for name, _ in STAGES]
            row = [f"{pairs:,}", mode, *stages, f"**{result['to_step_1']:.1f} s**", f"{result['first_step']:.1f} s",
                   f"{result['max_rss_mb']} MB", f"{result['peak_tree_pss_mb']} MB"]  # fmt: skip
            print(f"| {' | '.join(row)} |", flush=True)
            args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
