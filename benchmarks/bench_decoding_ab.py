"""Decoding speed of this checkout's opt-in CPU paths against the package at another git commit, same weights.

    python benchmarks/bench_decoding_ab.py --baseline a9ffa01 --rounds 10
    python benchmarks/bench_decoding_ab.py --quick          # small sizes, to check the script
    python benchmarks/bench_decoding_ab.py --baseline 362b2a6 --rounds 10 --cpu_time   # on a machine others share
    python benchmarks/bench_decoding_ab.py --baseline 23df3fd --rounds 10 --threads 1

Builds the base model (d_model 512, 6+6 layers, vocabulary 8000) in both packages with the same weights, makes
this checkout's `optimize_for_cpu_inference` and `quantize_int8` versions and the baseline's own float32 (through
its `optimize_for_cpu_inference`, where it has one) and int8 models, and this checkout's plain model, checks that they
generate the same tokens, then times `generate()` interleaved, round by round, and prints new tokens/s and the
median per-round speed ratios new / baseline and opt-in / plain for greedy batch 1, beam 4 and greedy batch 16, in
that order with the same models: beam 4 and batch 16 run after one-row decoding has made its first-use choices (a
process that mixes them). The baseline is imported under another name (see bench_models.load_baseline).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import statistics
import time

import torch

import bench_models


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="a9ffa01", metavar="REF", help="git commit to compare against")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few tokens")
    parser.add_argument(
        "--cpu_time",
        action="store_true",
        help="time in this process's CPU time on one thread, so that time a busy machine gives other processes "
        "does not count (tokens/s are then per CPU second)",
    )
    parser.add_argument("--threads", type=int, help="torch's thread count, set before the models are built")
    args = parser.parse_args()
    if args.cpu_time and args.threads not in (None, 1):
        parser.error(f"--cpu_time times one thread; drop --threads {args.threads} or --cpu_time")
    if args.cpu_time or args.threads:
        torch.set_num_threads(1 if args.cpu_time else args.threads)  # before optimizing: its choices are per count

    from hf_vanilla_transformer.cpu_inference import optimize_for_cpu_inference
    from hf_vanilla_transformer.quantization import quantize_int8

    baseline = bench_models.load_baseline(args.baseline)
    old_quantize = importlib.import_module(f"{baseline.__name__}.quantization").quantize_int8
    try:
        old_optimize = importlib.import_module(f"{baseline.__name__}.cpu_inference").optimize_for_cpu_inference
    except ModuleNotFoundError:  # a commit from before the opt-in path, whose model had its speed inside

        def old_optimize(model):
            return model
    sizes = {"d_model": 512, "d_ff": 2048, "heads": 8, "layers": 6}
    vocab, source_length, new_tokens = 8000, 32, 64
    if args.quick:
        sizes, vocab, source_length, new_tokens = {"d_model": 64, "d_ff": 128, "heads": 4, "layers": 2}, 500, 8, 8
    torch.manual_seed(0)
    plain = bench_models.vanilla_model(sizes, vocab).eval()
    old = bench_models.vanilla_model(sizes, vocab, package=baseline).eval()
    old.load_state_dict(plain.state_dict())
    models = {
        "baseline fp32": old_optimize(copy.deepcopy(old)),
        "opt-in fp32": optimize_for_cpu_inference(copy.deepcopy(plain)),
        "baseline int8": old_quantize(old),
        "opt-in int8": quantize_int8(plain),
        "plain fp32": plain,  # this checkout's plain model: what the opt-in path must never fall below
    }
    cpu = torch.device("cpu")
    clock = time.perf_counter
    if args.cpu_time:
        clock = time.process_time
    results = {}
    for label, batch, beams in [("greedy b1", 1, 1), ("beam4 b1", 1, 4), ("greedy b16", 16, 1)]:
        fns = {
            name: bench_models.generate_fn("vanilla", model, batch, source_length, new_tokens, beams, vocab, cpu)
            for name, model in models.items()
        }
        tokens = {name: fn() for name, fn in fns.items()}
        times = bench_models.interleaved(fns, args.rounds, 1, cpu, clock)
        row = {name: batch * new_tokens / statistics.median(t) for name, t in times.items()}
        for kind in ("fp32", "int8"):
            new, ref = times[f"opt-in {kind}"], times[f"baseline {kind}"]
            row[f"ratio {kind}"] = statistics.median(r / n for r, n in zip(ref, new))
            row[f"same tokens {kind}"] = torch.equal(tokens[f"opt-in {kind}"], tokens[f"baseline {kind}"])
        row["opt-in / plain fp32"] = statistics.median(p / n for p, n in zip(times["plain fp32"], times["opt-in fp32"]))
        row["same tokens plain"] = torch.equal(tokens["opt-in fp32"], tokens["plain fp32"])
        results[label] = row
        print(
            f"{label}: new tokens/s " + ", ".join(f"{name} {row[name]:.1f}" for name in models)
            + f"; new / baseline fp32 {row['ratio fp32']:.3f}, int8 {row['ratio int8']:.3f}"
            + f"; opt-in / plain fp32 {row['opt-in / plain fp32']:.3f}, same tokens {row['same tokens plain']}"
            + f"; same tokens fp32 {row['same tokens fp32']}, int8 {row['same tokens int8']}",
            flush=True,
        )
    return results


if __name__ == "__main__":
    main()
