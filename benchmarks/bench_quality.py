"""Translation quality on real text: this package's Transformer against transformers' MarianMTModel.

Mode `trainer` (default): both models train side by side from step 1 with the same sizes, the same shared
BPE tokenizer, the same data order, steps and schedule, through a plain `Seq2SeqTrainer` and
`DataCollatorForSeq2Seq`; then both decode the test split with the same beam search. Printed per seed and
model: sacreBLEU BLEU and chrF (with signatures), the training loss at fixed steps, and steps per second.
Mode `cli`: runs `hf-vanilla-train --train_file ... --test_file ...` as a user would, at the same number
of steps, and reads its scores. Its output folder sits beside the result file (`<result>.run/`) with a checkpoint
every `--cli_save_steps` steps (two kept), so that a run cut off resumes from its last checkpoint when the command
runs again (the command line's own resume, which gives the same model); the folder goes once the result is written.

It needs a parallel corpus, CORPUS/train.jsonl and CORPUS/test.jsonl with lines
{"translation": {"fr": ..., "en": ...}}; on a Debian machine benchmarks/build_corpus.py makes one from the gettext
catalogues (French about 47.9k pairs, Spanish about 41.8k):

    python benchmarks/build_corpus.py /tmp/corpus-fr --lang fr
    python benchmarks/bench_quality.py --corpus /tmp/corpus-fr --source_lang fr --seeds 42 43 44
    python benchmarks/bench_quality.py --corpus /tmp/corpus-fr --source_lang fr --mode cli

A model is `vanilla`, `marian`, or either with config values after a colon, for ablations:
`--models vanilla marian vanilla:init_scheme=xavier`. `vanilla:marian_init=true` starts this model
from the very weights MarianMTModel draws at that seed (converted), which separates the initial draw from
everything else.

Each run's result is its own JSON file, RESULTS_DIR/<pair>/<model>_<steps>steps_seed<seed>.json (RESULTS_DIR is
benchmarks/results_quality by default); a run whose file exists is skipped, so a table that was cut off resumes
where it stopped. The README's quality table is built from these files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The issue's setup (d_model 256, 3+3 layers, 152 sentences a step, 1000 steps, lr 1.5e-3 after 200 warm-up steps).
SIZES = {"d_model": 256, "d_ff": 1024, "heads": 4, "layers": 3, "dropout": 0.1}


def parse_value(raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_model_spec(spec: str) -> tuple[str, dict]:
    """'vanilla' or 'marian', optionally ':key=value,key=value' of config values on top of the shared sizes."""
    kind, _, rest = spec.partition(":")
    if kind not in ("vanilla", "marian"):
        raise ValueError(f"A model is 'vanilla' or 'marian', optionally with ':key=value,...'; got {spec!r}.")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} in {spec!r} is not key=value.")
        overrides[key.strip()] = parse_value(raw.strip())
    return kind, overrides


def build_model(kind: str, overrides: dict, sizes: dict, tokenizer):
    """One of the two models at the same sizes, with the tokenizer's special ids and the same ties."""
    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "decoder_start_token_id": tokenizer.bos_token_id,
    }
    if kind == "vanilla" and overrides.pop("marian_init", False):
        from hf_vanilla_transformer.convert_marian import convert_marian

        # Marian's own initial weights at this seed, in this model: the initial draw is then the same for both.
        return convert_marian(build_model("marian", overrides, sizes, tokenizer))
    if kind == "vanilla":
        from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration

        values = {
            "d_model": sizes["d_model"],
            "d_ff": sizes["d_ff"],
            "num_heads": sizes["heads"],
            "encoder_layers": sizes["layers"],
            "decoder_layers": sizes["layers"],
            "dropout": sizes["dropout"],
            **ids,
            **overrides,
        }
        config = VanillaTransformerConfig(**values)
        config._attn_implementation = "sdpa"
        return VanillaTransformerForConditionalGeneration(config)
    from transformers import MarianConfig, MarianMTModel

    values = {
        "d_model": sizes["d_model"],
        "encoder_ffn_dim": sizes["d_ff"],
        "decoder_ffn_dim": sizes["d_ff"],
        "encoder_attention_heads": sizes["heads"],
        "decoder_attention_heads": sizes["heads"],
        "encoder_layers": sizes["layers"],
        "decoder_layers": sizes["layers"],
        "dropout": sizes["dropout"],
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "activation_function": "relu",
        "scale_embedding": True,
        "share_encoder_decoder_embeddings": True,
        "tie_word_embeddings": True,
        "max_position_embeddings": 512,
        "forced_eos_token_id": None,
        **ids,
        **overrides,
    }
    return MarianMTModel(MarianConfig(**values, attn_implementation="sdpa"))


def loss_at_steps(log_history: list[dict], every: int, key: str = "loss") -> dict[int, float]:
    """The Trainer's logged training loss (mean over each logging interval) at multiples of `every`; `key`
    "grad_norm" gives the gradient norm before clipping at those steps."""
    return {entry["step"]: round(entry[key], 4) for entry in log_history if key in entry and entry["step"] % every == 0}


def load_run(path: Path) -> dict:
    run = json.loads(path.read_text())
    for key in ("loss", "grad_norm"):  # JSON keeps the steps as strings
        run[key] = {int(step): value for step, value in run.get(key, {}).items()}
    return run


def result_path(results_dir: Path, pair: str, model: str, steps: int, seed: int) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", model).strip("_")
    return results_dir / pair / f"{slug}_{steps}steps_seed{seed}.json"


def decode_scores(model, tokenizer, sources: list[str], references: list[str], args) -> dict:
    from transformers import GenerationConfig

    from hf_vanilla_transformer.training import translation_scores
    from hf_vanilla_transformer.translation import translate

    # The same decoding for both models, whatever each would carry by default.
    model.generation_config = GenerationConfig(
        decoder_start_token_id=tokenizer.bos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        num_beams=args.num_beams,
        length_penalty=args.length_penalty,
        early_stopping=True,
        max_new_tokens=args.max_new_tokens,
    )
    model.eval()
    started = time.perf_counter()
    hypotheses = translate(model, tokenizer, sources, batch_size=args.eval_batch_size, progress=True)
    scores = translation_scores(hypotheses, references)
    scores["decode_seconds"] = round(time.perf_counter() - started, 1)
    scores["samples"] = [{"source": s, "hypothesis": h, "reference": r} for s, h, r in list(zip(sources, hypotheses, references))[:3]]
    return scores


def prepare(args):
    """The corpus, a shared BPE tokenizer trained on its training side, and the tokenised splits."""
    from hf_vanilla_transformer.data import load_translation_data, preprocess_dataset
    from hf_vanilla_transformer.tokenization import train_bpe_tokenizer

    corpus = Path(args.corpus)
    raw, _, _ = load_translation_data(
        train_file=str(corpus / "train.jsonl"),
        test_file=str(corpus / "test.jsonl"),
        source_lang=args.source_lang,
        target_lang=args.target_lang,
    )

    def texts():
        for pair in raw["train"]["translation"]:
            yield pair[args.source_lang]
            yield pair[args.target_lang]

    tokenizer = train_bpe_tokenizer(texts(), vocab_size=args.vocab_size)
    processed, stats = preprocess_dataset(
        raw, tokenizer, args.source_lang, args.target_lang, max_source_length=256, max_target_length=256
    )
    test = raw["test"]["translation"][: args.max_test_samples]
    sources = [pair[args.source_lang] for pair in test]
    references = [pair[args.target_lang] for pair in test]
    return tokenizer, processed["train"].remove_columns(["source_length", "target_length"]), sources, references, stats


def run_trainer(spec: str, seed: int, args, tokenizer, train_set, sources, references) -> dict:
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, set_seed

    kind, overrides = parse_model_spec(spec)
    set_seed(seed)  # the same initial draw order for every model of a seed
    model = build_model(kind, overrides, SIZES, tokenizer)
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = Seq2SeqTrainingArguments(
            output_dir=output_dir,
            max_steps=args.max_steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            lr_scheduler_type="inverse_sqrt",
            warmup_steps=args.warmup_steps,
            optim="adamw_torch",
            adam_beta1=0.9,
            adam_beta2=0.98,
            adam_epsilon=1e-9,
            weight_decay=0.0,
            max_grad_norm=args.max_grad_norm,
            label_smoothing_factor=0.1,
            logging_steps=args.log_every,
            save_strategy="no",
            report_to="none",
            seed=seed,
            dataloader_pin_memory=False,
            train_sampling_strategy="group_by_length" if args.group_by_length else "random",
            disable_tqdm=not args.progress,
        )
        trainer = Seq2SeqTrainer(
            model=model,
            args=training_args,
            train_dataset=train_set,
            processing_class=tokenizer,
            data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        )
        result = trainer.train()
        losses = loss_at_steps(trainer.state.log_history, args.log_every)
        grad_norms = loss_at_steps(trainer.state.log_history, args.log_every, key="grad_norm")
    scores = decode_scores(model, tokenizer, sources, references, args)
    return {
        "model": spec,
        "seed": seed,
        "loss": losses,
        "grad_norm": grad_norms,
        "final_loss": losses.get(args.max_steps),
        "steps_per_second": round(args.max_steps / result.metrics["train_runtime"], 3),
        **scores,
    }


def run_cli(seed: int, args, output_dir: Path) -> dict:
    """`hf-vanilla-train` on the corpus with nothing but the data, the languages, the steps and the seed (and how
    often it saves, which changes nothing in the model), in `output_dir`, where an unfinished run resumes."""
    corpus = Path(args.corpus)
    command = [
        sys.executable, "-m", "train.train",
        "--train_file", str(corpus / "train.jsonl"),
        "--test_file", str(corpus / "test.jsonl"),
        "--source_lang", args.source_lang,
        "--target_lang", args.target_lang,
        "--max_steps", str(args.max_steps),
        "--seed", str(seed),
        "--output_dir", str(output_dir),
        "--save_steps", str(args.cli_save_steps),
        "--save_total_limit", "2",
        *args.cli_args,
    ]  # fmt: skip
    from hf_vanilla_transformer.training import last_complete_checkpoint

    checkpoint = last_complete_checkpoint(str(output_dir))  # what the command line resumes from
    resumed_from = int(checkpoint.rsplit("-", 1)[1]) if checkpoint else None
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO)
    seconds = time.perf_counter() - started
    results = json.loads(Path(output_dir, "all_results.json").read_text())
    state = json.loads(Path(output_dir, "trainer_state.json").read_text())
    losses = loss_at_steps(state["log_history"], args.log_every)
    return {
        "model": "hf-vanilla-train " + " ".join(args.cli_args),
        "seed": seed,
        "loss": losses,
        "final_loss": losses.get(args.max_steps),
        "steps_per_second": round((args.max_steps - (resumed_from or 0)) / results["train_runtime"], 3),
        "total_seconds": round(seconds, 1),
        "resumed_from_step": resumed_from,  # steps/s and total_seconds then cover the steps after it
        **{k.removeprefix("test_"): v for k, v in results.items() if k.startswith("test_")},
    }


def code_version() -> str | None:
    """The checkout's commit, with "+changes" where tracked files differ from it; None outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+changes" if changed else "")


def print_table(runs: list[dict], every: int) -> None:
    steps = sorted({step for run in runs for step in run["loss"]})
    shown = [s for s in steps if s % (every * max(1, len(steps) // 5)) == 0 or s == steps[-1]] if steps else []
    header = f"{'model':44s} {'seed':>5s} {'BLEU':>6s} {'chrF':>6s} {'steps/s':>8s} " + " ".join(f"{'loss@' + str(s):>9s}" for s in shown)
    print("\n" + header)
    for run in runs:
        losses = " ".join(f"{run['loss'].get(s, float('nan')):9.3f}" for s in shown)
        print(f"{run['model'][:44]:44s} {run['seed']:5d} {run['bleu']:6.2f} {run['chrf']:6.2f} {run['steps_per_second']:8.3f} {losses}")
    by_model: dict[str, list[float]] = {}
    for run in runs:
        by_model.setdefault(run["model"], []).append(run["bleu"])
    print("\nBLEU over seeds (mean, min-max):")
    for model, values in by_model.items():
        print(f"  {model[:60]:60s} {sum(values) / len(values):6.2f}  {min(values):.2f}-{max(values):.2f}  (n={len(values)})")
    if runs:
        print("sacreBLEU:", runs[0]["bleu_signature"], "|", runs[0]["chrf_signature"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="Folder with train.jsonl and test.jsonl.")
    parser.add_argument("--source_lang", required=True)
    parser.add_argument("--target_lang", default="en")
    parser.add_argument("--mode", choices=("trainer", "cli"), default="trainer")
    parser.add_argument("--models", nargs="+", default=["vanilla", "marian"], help="Model specs (see above).")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--max_steps", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=152, help="Sentences a step.")
    parser.add_argument("--learning_rate", type=float, default=1.5e-3)
    parser.add_argument("--warmup_steps", type=int, default=200)
    parser.add_argument(
        "--no_group_by_length", dest="group_by_length", action="store_false",
        help="Draw batches at random: about 5x the padded tokens (and time) of length-grouped batches.",
    )
    parser.add_argument("--max_grad_norm", type=float, default=1.0, help="The Trainer's default.")
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--num_beams", type=int, default=4)
    parser.add_argument("--length_penalty", type=float, default=0.6)
    parser.add_argument("--max_new_tokens", type=int, default=160)
    parser.add_argument("--eval_batch_size", type=int, default=64)
    parser.add_argument("--max_test_samples", type=int, default=None, help="Decode only the first N test pairs.")
    parser.add_argument("--log_every", type=int, default=50)
    parser.add_argument("--progress", action="store_true", help="Show the Trainer's progress bar.")
    parser.add_argument(
        "--cli_save_steps", type=int, default=100,
        help="With --mode cli: a checkpoint every N steps, from which a run cut off resumes.",
    )
    parser.add_argument("--cli_args", nargs=argparse.REMAINDER, default=[], help="With --mode cli: extra arguments.")
    parser.add_argument(
        "--results_dir", default=str(REPO / "benchmarks" / "results_quality"),
        help="One JSON file per (pair, model, steps, seed) under RESULTS_DIR/<pair>/; existing ones are skipped.",
    )  # fmt: skip
    args = parser.parse_args(argv)
    for spec in args.models:
        parse_model_spec(spec)  # a typo fails before any training
    pair = f"{args.source_lang}-{args.target_lang}"
    results_dir = Path(args.results_dir)
    specs = ["hf-vanilla-train " + " ".join(args.cli_args)] if args.mode == "cli" else args.models
    todo = [(seed, spec) for seed in args.seeds for spec in specs]
    done = [(seed, spec) for seed, spec in todo if result_path(results_dir, pair, spec, args.max_steps, seed).exists()]
    for seed, spec in done:
        print(f"seed {seed}, {spec}: already in {result_path(results_dir, pair, spec, args.max_steps, seed)}, skipped")
    todo = [item for item in todo if item not in done]

    runs = [load_run(result_path(results_dir, pair, spec, args.max_steps, seed)) for seed, spec in done]
    if not todo:
        print_table(runs, args.log_every)
        return {"runs": runs}
    tokenizer, train_set, sources, references, stats = prepare(args)
    report = {
        "corpus": str(args.corpus),
        "pair": f"{args.source_lang}-{args.target_lang}",
        "train_pairs": len(train_set),
        "test_pairs": len(sources),
        "filtering": str(stats),
        "vocab": len(tokenizer),
        "sizes": SIZES,
        "setup": {k: v for k, v in vars(args).items() if k not in ("corpus", "output")},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "code": code_version(),
        "runs": [],
    }
    print(f"{report['pair']}: {len(train_set)} training pairs, {len(sources)} test pairs, vocabulary {len(tokenizer)}")
    for seed, spec in todo:
        print(f"\n=== seed {seed}: {spec} ===", flush=True)
        path = result_path(results_dir, pair, spec, args.max_steps, seed)
        if args.mode == "cli":
            run = run_cli(seed, args, path.with_suffix(".run"))
        else:
            run = run_trainer(spec, seed, args, tokenizer, train_set, sources, references)
        print(f"BLEU {run['bleu']} chrF {run['chrf']} final loss {run['final_loss']} "
              f"steps/s {run['steps_per_second']}", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_suffix(".partial")
        staged.write_text(json.dumps({**{k: v for k, v in report.items() if k != "runs"}, **run}, indent=2, ensure_ascii=False))
        staged.replace(path)  # a run cut off while writing leaves no file, so it runs again
        shutil.rmtree(path.with_suffix(".run"), ignore_errors=True)  # the command line's folder, once read
        runs.append(run)
    print_table(runs, args.log_every)
    print(f"\nJSON: {results_dir / pair}")
    return {**report, "runs": runs}


if __name__ == "__main__":
    main()
