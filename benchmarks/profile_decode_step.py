"""Where a greedy batch-1 decoding step spends its time, against the memory-bandwidth floor.

    python benchmarks/profile_decode_step.py --engine plain --threads 2
    python benchmarks/profile_decode_step.py --engine compiled --threads 2
    python benchmarks/profile_decode_step.py --quick --engine plain     # tiny sizes, to check the script

Builds one engine of bench_cpu_engines.py (the paper's base sizes, vocabulary 8000, random weights), decodes 64
forced new tokens from a 32-token source a few times to warm up, times the fastest of `--repeats` calls without the
profiler, then profiles one call with torch.profiler and prints, per decoding step: the operators' own CPU time by
group (the products of the linear layers, attention, cache and mask work, the rest), the time outside any torch
operator (Python: generate()'s loop, module calls, argument handling), and the floor that memory bandwidth sets: a
step reads every decoder weight whose input changes each step and the output layer (about 104 MB in float32 at base
sizes, a quarter in int8), and the machine streams memory at what `torch.sum` over 256 MB measures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cpu_engines  # noqa: E402
import bench_linear_rows  # noqa: E402

# Operator name -> group; the first group whose prefix matches wins.
GROUPS = (
    ("linear products", ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
                         "mkldnn::", "mkl::", "quantized::", "aten::_mkl", "onednn::")),
    ("attention", ("aten::scaled_dot_product", "aten::_scaled_dot_product", "aten::softmax", "aten::_softmax")),
    ("cache and masks", ("aten::cat", "aten::index_copy", "aten::index_put", "aten::copy_", "aten::index_select",
                         "aten::cumsum", "aten::arange", "aten::where", "aten::expand", "aten::isin", "aten::all",
                         "aten::any", "aten::item", "aten::_local_scalar_dense", "aten::eq", "aten::ne")),
    ("compiled kernels", ("Torch-Compiled Region", "graph_", "cpp_fused", "CompiledFunction", "## Call CompiledFxGraph")),
)  # fmt: skip


def group_of(name: str) -> str:
    return next((group for group, prefixes in GROUPS if name.startswith(prefixes)), "other operators")


def weight_bytes_per_step(sizes: dict, bytes_per_weight: float) -> float:
    """Every decoder weight whose input changes each step (self-attention Q, K, V, O; cross-attention Q, O; the two
    feed-forward layers) and the output layer; the cross-attention keys and values of the source are cached."""
    d, f, n, v = sizes["d_model"], sizes["d_ff"], sizes["layers"], sizes["vocab"]
    return (n * (6 * d * d + 2 * d * f) + v * d) * bytes_per_weight


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="plain", choices=[e for e in bench_cpu_engines.ENGINES if e[:3] != "ct2"])
    parser.add_argument("--case", default="greedy b1", choices=list(bench_cpu_engines.CASES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=12, help="operators listed")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few tokens: checks the script runs")
    parser.add_argument("--output", help="write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = bench_cpu_engines.QUICK if args.quick else bench_cpu_engines.BASE
    steps = sizes["new_tokens"]
    with tempfile.TemporaryDirectory(prefix="profile-decode-") as folder:
        bench_cpu_engines.prepare_folder(Path(folder), sizes, with_ctranslate2=False)
        run = bench_cpu_engines.decode_fn(args.engine, args.case, Path(folder), sizes, args.threads)
        run()
        run()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            start = time.perf_counter()
            run()
            profiled_ms = (time.perf_counter() - start) * 1e3 / steps

    step_ms = min(times) * 1e3 / steps
    operators = {}
    for event in profile.key_averages():
        operators[event.key] = (event.self_cpu_time_total / 1e3 / steps, event.count / steps)
    groups: dict[str, float] = {}
    for name, (ms, _) in operators.items():
        groups[group_of(name)] = groups.get(group_of(name), 0.0) + ms
    outside = max(profiled_ms - sum(groups.values()), 0.0)
    bandwidth = bench_linear_rows.read_bandwidth_gbs(reduce=min)  # the best of the timings
    bytes_per_weight = 1 if args.engine == "int8" else 4
    weights_mb = weight_bytes_per_step(sizes, bytes_per_weight) / 1e6
    floor_ms = weights_mb / 1e3 / bandwidth * 1e3

    info = bench_cpu_engines.machine()
    print(f"{info['processor']}, {args.threads} thread(s), torch {info['torch']}, transformers {info['transformers']}")
    print(f"engine {args.engine}: {args.case}, {steps} new tokens from {sizes['source']}-token sources")
    print(f"a step: {step_ms:.2f} ms unprofiled (fastest of {args.repeats}; whole generate() / new tokens), "
          f"{profiled_ms:.2f} ms under the profiler")
    print(f"memory floor: {weights_mb:.1f} MB of weights a step at {bandwidth:.1f} GB/s (torch.sum over 256 MB) = "
          f"{floor_ms:.2f} ms; this step takes {step_ms / floor_ms:.2f}x the floor")
    print(f"\n{'where the profiled step goes':36s} {'ms a step':>10s}")
    for group, ms in sorted(groups.items(), key=lambda item: -item[1]):
        print(f"{group:36s} {ms:10.3f}")
    print(f"{'outside torch operators (Python)':36s} {outside:10.3f}")
    print(f"\n{'operator (own CPU time)':44s} {'ms a step':>10s} {'calls a step':>13s}")
    for name, (ms, calls) in sorted(operators.items(), key=lambda item: -item[1][0])[: args.top]:
        print(f"{name[:44]:44s} {ms:10.3f} {calls:13.1f}")
    results = {
        "machine": info, "threads": args.threads, "engine": args.engine, "case": args.case, "sizes": sizes,
        "step_ms": step_ms, "step_ms_runs": [t * 1e3 / steps for t in times], "profiled_step_ms": profiled_ms,
        "bandwidth_gbs": bandwidth, "weights_mb_per_step": weights_mb, "floor_ms": floor_ms,
        "groups_ms": groups, "outside_operators_ms": outside,
        "operators": {name: {"ms": ms, "calls": calls} for name, (ms, calls) in operators.items()},
    }  # fmt: skip
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
