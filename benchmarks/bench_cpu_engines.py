"""CPU decoding speed, one engine per process: this package's paths against Marian and CTranslate2.

    python benchmarks/bench_cpu_engines.py --threads 1,2 --output benchmarks/results_cpu_engines.json
    python benchmarks/bench_cpu_engines.py --quick --rounds 1 --repeats 1   # tiny sizes, to check the script
    python benchmarks/bench_cpu_engines.py --baseline 362b2a6 --engines plain,cpu-opt,int8 --rounds 4   # A/B

Why one engine per process: timed in one process, engines disturb each other. A CTranslate2 call leaves its worker
threads spinning for a while after it returns, which slowed the torch decodes that followed by up to 2.4x on a
2-core machine, and a `ctranslate2.Translator` with default threads changes torch's thread count for the process.
So every figure here comes from a fresh process that builds one engine, decodes one case (greedy batch 1, greedy
batch 16, beam 4 batch 1), and exits; the processes run one at a time, the engines in turn, in reverse order in
every other round, so that slow spells of a shared machine fall on all of them.

Engines (all at the paper's base sizes unless --quick: d_model 512, 6+6 layers, 8 heads, d_ff 2048, shared
vocabulary 8000, random weights; the package's engines and CTranslate2's share the same weights, saved once):
- `marian`: transformers' MarianMTModel configured the same way (ReLU, post-LN, sdpa, scaled shared embeddings);
- `default`: what `load_translation_model(folder)` gives, the path hf-vanilla-translate and hf-vanilla-evaluate use;
- `plain`: the model as `from_pretrained` loads it;
- `cpu-opt`: + `optimize_for_cpu_inference` (opt-in);
- `int8`: `quantize_int8`;
- `ct2`, `ct2-int8`: the same weights exported with `export_ctranslate2`, float32 and int8 (needs ctranslate2);
- with `--baseline REF`, each of `plain`, `cpu-opt` and `int8` also as the package was at git commit REF
  (`baseline-plain`, ...), on the same weights: the A/B for a change, with the ratio new / baseline and whether
  the two decode the same tokens (weak: these untrained weights make every engine repeat one token, so equal
  outputs are tested in tests/, not here).

Each process makes a first call (a warm-up, whose time is recorded), then
`--repeats` timed calls of 64 forced new tokens from 32-token sources, and reports the fastest. The table gives, per
thread count, case and engine, the best over rounds and the range of the rounds, then the ratios the package
claims, from the best figures. Processor, flags, thread count, library versions and the load average go with the
figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENGINES = ["marian", "default", "plain", "cpu-opt", "int8", "ct2", "ct2-int8"]
BASELINE_OF = {"plain": "baseline-plain", "cpu-opt": "baseline-cpu-opt", "int8": "baseline-int8"}
CASES = {"greedy b1": (1, 1), "greedy b16": (16, 1), "beam4 b1": (1, 4)}  # name: (batch, beams)
BASE = {"d_model": 512, "d_ff": 2048, "heads": 8, "layers": 6, "vocab": 8000, "source": 32, "new_tokens": 64}
QUICK = {"d_model": 64, "d_ff": 128, "heads": 4, "layers": 2, "vocab": 300, "source": 8, "new_tokens": 8}

# The claims of the README's speed section, each (numerator, denominator, at least): checked and printed.
CLAIMS = (("default", "marian", 1.3), ("int8", "ct2-int8", 1.5), ("cpu-opt", "plain", 0.97))


# --- The machine ---


def machine() -> dict:
    """Processor name and the SIMD flags that decide which kernels run, core count, library versions, load."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cores": os.cpu_count()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and "processor" not in info:
            info["processor"] = value.strip()
        if key.strip() == "flags" and "flags" not in info:
            wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")
            info["flags"] = [flag for flag in wanted if flag in value.split()]
    info.setdefault("processor", platform.processor() or platform.machine())
    for name in ("torch", "transformers", "ctranslate2"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --- The shared folder: weights, tokenizer, CTranslate2 exports ---


def prepare_folder(folder: Path, sizes: dict, with_ctranslate2: bool) -> None:
    """The package's model with seeded random weights and a word-level tokenizer over its ids, saved as a model
    folder (what hf-vanilla-train leaves), and its CTranslate2 exports beside it."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import logging

    logging.disable_progress_bar()

    from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + [f"t{i}" for i in range(4, sizes["vocab"])])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    config = VanillaTransformerConfig(
        vocab_size=sizes["vocab"], d_model=sizes["d_model"], d_ff=sizes["d_ff"], num_heads=sizes["heads"],
        encoder_layers=sizes["layers"], decoder_layers=sizes["layers"], max_position_embeddings=512,
    )  # fmt: skip
    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration(config).eval()
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    if with_ctranslate2:
        from hf_vanilla_transformer.ctranslate2_export import export_ctranslate2

        export_ctranslate2(model, folder / "ct2", tokenizer)
        export_ctranslate2(model, folder / "ct2-int8", tokenizer, quantization="int8")


# --- One engine, one case: what a child process runs ---


def source_ids(batch: int, sizes: dict) -> list[list[int]]:
    import torch

    generator = torch.Generator().manual_seed(1)
    return torch.randint(4, sizes["vocab"], (batch, sizes["source"]), generator=generator).tolist()


def marian_engine(folder: Path, sizes: dict):
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_models

    torch.manual_seed(0)
    layout = {key: sizes[key] for key in ("d_model", "d_ff", "heads", "layers")}
    return bench_models.marian_model(layout, sizes["vocab"]).eval()


def package_engine(folder: Path, quantize: str | None = None, cpu_products: bool = False, change=None):
    """The package's model loaded from `folder` as hf-vanilla-translate loads it, then `change(model)`."""
    from hf_vanilla_transformer.translation import load_translation_model

    options = {} if cpu_products is None else {"cpu_products": cpu_products}
    model = load_translation_model(str(folder / "model"), device="cpu", quantize=quantize, **options)[0]
    return change(model) if change is not None else model


def optimized(model):
    from hf_vanilla_transformer.cpu_inference import optimize_for_cpu_inference

    return optimize_for_cpu_inference(model)


# How each torch engine is built from the shared folder (CTranslate2's two are loaded in decode_fn).
TORCH_ENGINES = {
    "marian": marian_engine,
    "default": lambda folder, sizes: package_engine(folder, cpu_products=None),
    "plain": lambda folder, sizes: package_engine(folder),
    "cpu-opt": lambda folder, sizes: package_engine(folder, change=optimized),
    "int8": lambda folder, sizes: package_engine(folder, quantize="int8"),
}


def baseline_engine(engine: str, folder: Path, sizes: dict, ref: str):
    """`engine` (baseline-plain, baseline-cpu-opt, baseline-int8) built by the package as it was at commit `ref`
    (imported under another name, see bench_models.load_baseline) over the weights saved in `folder`."""
    import importlib

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_models

    from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration

    package = bench_models.load_baseline(ref)
    layout = {key: sizes[key] for key in ("d_model", "d_ff", "heads", "layers")}
    model = bench_models.vanilla_model(layout, sizes["vocab"], package=package).eval()
    weights = VanillaTransformerForConditionalGeneration.from_pretrained(folder / "model").state_dict()
    model.load_state_dict(weights)
    if engine == "baseline-int8":
        return importlib.import_module(f"{package.__name__}.quantization").quantize_int8(model)
    if engine == "baseline-cpu-opt":
        try:
            cpu_inference = importlib.import_module(f"{package.__name__}.cpu_inference")
        except ModuleNotFoundError:  # a commit from before the opt-in path, whose model had its speed inside
            return model
        with torch.no_grad():
            return cpu_inference.optimize_for_cpu_inference(model)
    return model


def decode_fn(engine: str, case: str, folder: Path, sizes: dict, threads: int, baseline: str | None = None):
    """A function decoding `case` once with `engine`, returning the new tokens as lists of ids."""
    batch, beams = CASES[case]
    source = source_ids(batch, sizes)
    new_tokens = sizes["new_tokens"]
    if engine.startswith("ct2"):
        import ctranslate2

        compute_type = "int8" if engine == "ct2-int8" else "float32"
        translator = ctranslate2.Translator(
            str(folder / engine), device="cpu", compute_type=compute_type, intra_threads=threads, inter_threads=1
        )
        tokens = [[f"t{i}" for i in row] for row in source]

        def run_ctranslate2():
            results = translator.translate_batch(
                tokens, beam_size=beams, length_penalty=1.0, max_decoding_length=new_tokens,
                min_decoding_length=new_tokens, max_input_length=0,
            )  # fmt: skip
            return [[int(t[1:]) if t.startswith("t") else -1 for t in r.hypotheses[0]] for r in results]

        return run_ctranslate2

    import torch

    if engine.startswith("baseline-"):
        model = baseline_engine(engine, folder, sizes, baseline)
    else:
        model = TORCH_ENGINES[engine](folder, sizes)
    input_ids = torch.tensor(source)
    options = dict(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=beams, do_sample=False,
        early_stopping=False, length_penalty=1.0,
    )  # fmt: skip

    @torch.inference_mode()
    def run_torch():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **options)
        return out[:, 1:].tolist()  # without the decoder start token

    return run_torch


def child(engine: str, case: str, folder: Path, sizes: dict, threads: int, repeats: int, baseline=None) -> dict:
    import torch
    from transformers.utils import logging

    logging.disable_progress_bar()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    fn = decode_fn(engine, case, folder, sizes, threads, baseline)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    tokens = fn()  # warm-up: first-call work
    first_call_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    batch = CASES[case][0]
    return {
        "engine": engine,
        "case": case,
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "new_tokens_per_call": batch * sizes["new_tokens"],
        "all_new_tokens": all(len(row) == sizes["new_tokens"] for row in tokens),
        "tokens_sha1": hashlib.sha1(json.dumps(tokens).encode()).hexdigest()[:12],
        "load_s": load_s,
        "first_call_s": first_call_s,
        "times_s": times,
        "new_tokens_per_s": batch * sizes["new_tokens"] / min(times),
    }


def run_child(
    engine: str, case: str, folder: Path, quick: bool, threads: int, repeats: int, baseline: str | None = None
) -> dict:
    """One engine and case in a fresh process of this script with `threads` threads (OpenMP's and MKL's pools sized
    to match)."""
    command = [
        sys.executable, os.path.abspath(sys.argv[0]), "--child", engine, "--case", case, "--folder", str(folder),
        "--threads", str(threads), "--repeats", str(repeats),
    ] + (["--quick"] if quick else []) + (["--baseline", baseline] if baseline else [])  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        return {"engine": engine, "case": case, "threads": threads, "error": done.stderr.strip()[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- The parent: rounds, table, claims ---


def summarize(runs: list[dict]) -> dict:
    """Per thread count, case and engine: best and worst of the rounds' fastest calls, and first-call times."""
    table: dict = {}
    for run in runs:
        cell = table.setdefault(str(run["threads"]), {}).setdefault(run["case"], {}).setdefault(run["engine"], {})
        if "error" in run:
            cell["error"] = run["error"]
            continue
        cell.setdefault("rounds", []).append(round(run["new_tokens_per_s"], 2))
        cell.setdefault("first_call_s", []).append(round(run["first_call_s"], 2))
        cell["tokens_sha1"] = run["tokens_sha1"]
        cell["all_new_tokens"] = cell.get("all_new_tokens", True) and run["all_new_tokens"]
    for cases in table.values():
        for engines in cases.values():
            for cell in engines.values():
                if "rounds" in cell:
                    cell["best"], cell["worst"] = max(cell["rounds"]), min(cell["rounds"])
    return table


def claims(table: dict) -> list[dict]:
    """Each claim of CLAIMS, per thread count and case, from the best figures."""
    checked = []
    for threads, cases in table.items():
        for case, engines in cases.items():
            for top, bottom, at_least in CLAIMS:
                if "best" in engines.get(top, {}) and "best" in engines.get(bottom, {}):
                    ratio = engines[top]["best"] / engines[bottom]["best"]
                    checked.append({
                        "threads": int(threads), "case": case, "ratio": f"{top} / {bottom}", "value": round(ratio, 3),
                        "at_least": at_least, "holds": ratio >= at_least,
                    })  # fmt: skip
    return checked


def against_baseline(table: dict) -> list[dict]:
    """Per thread count and case, each engine that has a baseline counterpart: new / baseline from the best
    figures, and whether both decoded the same tokens."""
    compared = []
    for threads, cases in table.items():
        for case, engines in cases.items():
            for engine, old in BASELINE_OF.items():
                if "best" in engines.get(engine, {}) and "best" in engines.get(old, {}):
                    compared.append({
                        "threads": int(threads), "case": case, "engine": engine,
                        "ratio": round(engines[engine]["best"] / engines[old]["best"], 3),
                        "same_tokens": engines[engine]["tokens_sha1"] == engines[old]["tokens_sha1"],
                    })  # fmt: skip
    return compared


def print_table(results: dict) -> None:
    info = results["machine"]
    print(
        f"\n{info['processor']} ({', '.join(info.get('flags', []))}), {info['cores']} cores; torch {info['torch']}, "
        f"transformers {info['transformers']}, ctranslate2 {info['ctranslate2']}; load average before "
        f"{results['load_average_before']}, after {results['load_average_after']}"
    )
    for threads, cases in results["table"].items():
        print(f"\n{threads} thread(s): new tokens/s, best of {results['rounds']} rounds (range), one process each")
        print(f"{'engine':16s}" + "".join(f"{case:>24s}" for case in cases))
        engines = [e for e in ENGINES + list(BASELINE_OF.values()) if any(e in row for row in cases.values())]
        for engine in engines:
            cells = []
            for row in cases.values():
                cell = row.get(engine, {})
                if "best" in cell:
                    cells.append(f"{cell['best']:.1f} ({cell['worst']:.0f}-{cell['best']:.0f})")
                else:
                    cells.append("failed" if "error" in cell else "")
            print(f"{engine:16s}" + "".join(f"{c:>24s}" for c in cells))
    for claim in results["claims"]:
        mark = "holds" if claim["holds"] else "FAILS"
        print(
            f"{claim['threads']} thread(s) {claim['case']:11s} {claim['ratio']:18s} {claim['value']:6.2f} "
            f"(at least {claim['at_least']}): {mark}"
        )
    for row in results.get("against_baseline", []):
        same = "same tokens" if row["same_tokens"] else "DIFFERENT TOKENS"
        print(
            f"{row['threads']} thread(s) {row['case']:11s} {row['engine']:8s} / {results['baseline']}: "
            f"{row['ratio']:.3f}, {same}"
        )
    for threads, cases in results["table"].items():
        for case, engines in cases.items():
            for engine, cell in engines.items():
                if "error" in cell:
                    print(f"{threads} thread(s) {case} {engine} failed: {cell['error'].splitlines()[-1]}")


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma list, from " + ", ".join(ENGINES))
    parser.add_argument("--cases", default=",".join(CASES), help="comma list, from " + ", ".join(CASES))
    parser.add_argument("--threads", default="2", help="comma list of thread counts, e.g. 1,2")
    parser.add_argument("--rounds", type=int, default=2, help="passes over all engines, alternating their order")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per process (the fastest counts)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few tokens: checks the script runs")
    parser.add_argument("--output", help="write the figures to this JSON file")
    parser.add_argument(
        "--baseline", metavar="REF", help="also time plain, cpu-opt and int8 as the package was at git commit REF"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = QUICK if args.quick else BASE
    if args.child:
        print(json.dumps(
            child(args.child, args.case, Path(args.folder), sizes, int(args.threads), args.repeats, args.baseline)
        ))  # fmt: skip
        return {}

    engines = [e for e in args.engines.split(",") if e]
    cases = [c for c in args.cases.split(",") if c]
    thread_counts = [int(t) for t in args.threads.split(",") if t]
    for given, known, option in ((engines, ENGINES, "--engines"), (cases, CASES, "--cases")):
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise SystemExit(f"{option}: unknown {unknown}; choose from {', '.join(known)}.")
    if args.baseline:
        engines += [BASELINE_OF[e] for e in engines if e in BASELINE_OF]
    info = machine()
    if info["ctranslate2"] is None and any(e.startswith("ct2") for e in engines):
        print("No CTranslate2 engines: pip install ctranslate2.", file=sys.stderr)
        engines = [e for e in engines if not e.startswith("ct2")]
    results = {
        "machine": info, "sizes": sizes, "rounds": args.rounds, "repeats": args.repeats,
        "command": " ".join(["python", "benchmarks/bench_cpu_engines.py", *sys.argv[1:]]),
        "load_average_before": load_average(), "baseline": args.baseline,
    }  # fmt: skip
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-cpu-engines-") as folder:
        prepare_folder(Path(folder), sizes, any(e.startswith("ct2") for e in engines))
        for threads in thread_counts:
            for round_index in range(args.rounds):
                order = engines if round_index % 2 == 0 else engines[::-1]
                for engine in order:
                    for case in cases:
                        run = run_child(engine, case, Path(folder), args.quick, threads, args.repeats, args.baseline)
                        run["round"] = round_index
                        run["load_average"] = load_average()
                        runs.append(run)
                        rate = f"{run['new_tokens_per_s']:.1f} new tokens/s" if "error" not in run else "failed"
                        print(f"{threads} thread(s), round {round_index + 1}, {engine}, {case}: {rate}", flush=True)
    results["load_average_after"] = load_average()
    results["table"] = summarize(runs)
    results["claims"] = claims(results["table"])
    results["against_baseline"] = against_baseline(results["table"])
    results["runs"] = runs
    print_table(results)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nWrote {args.output}")
    return results


if __name__ == "__main__":
    main()
