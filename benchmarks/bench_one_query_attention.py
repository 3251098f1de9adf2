"""Attention for one query position (a decoding step) through SDPA and through two matrix products, at decoding shapes.

    python benchmarks/bench_one_query_attention.py              # 2 threads, base sizes (8 heads of 64)
    python benchmarks/bench_one_query_attention.py --threads 1
    python benchmarks/bench_one_query_attention.py --quick      # few rounds, to check the script

A decoding step attends from one new position to every cached key and value (the target's, 12 calls a step in the
base model's 6 decoder layers with the source's). For each batch (batch 1 greedy, beam 4, batch 16) and number of
keys, this times `F.scaled_dot_product_attention` (what the model and `InferenceDecoderLayer` call) and softmax(q K^T
/ sqrt(d_k)) V written as two `torch.matmul` calls, with the keys and values read from memory ("cold": as a step
finds the encoder-decoder attention's, after every weight has streamed past) and from the processor's caches
("hot": as it finds the self-attention's, which the cache's `torch.cat` has just written). Prints microseconds a
call (median over interleaved rounds) and matmul / SDPA, with the processor and thread count; both give the same
numbers (the script checks).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cpu_engines  # noqa: E402

EVICTION_ELEMENTS = 64 << 18  # 256 MB of float32 read between cold calls: more than any last-level cache


def attention_functions(query, keys, values, scale: float) -> dict:
    """name: function computing the attention of `query` (batch, heads, 1, d) over `keys` and `values`."""

    def sdpa():
        return F.scaled_dot_product_attention(query, keys, values, scale=scale)

    def two_products():
        weights = torch.matmul(query, keys.transpose(-1, -2)).mul_(scale).softmax(-1)
        return torch.matmul(weights, values)

    return {"SDPA": sdpa, "two matmuls": two_products}


def call_times(functions: dict, rounds: int, cold: bool) -> dict[str, float]:
    """Median microseconds a call of each function, interleaved round by round."""
    other_memory = torch.ones(EVICTION_ELEMENTS) if cold else None
    times = {name: [] for name in functions}
    for function in functions.values():
        function()
    for _ in range(rounds):
        for name, function in functions.items():
            if other_memory is not None:
                other_memory.sum()
            start = time.perf_counter()
            function()
            times[name].append((time.perf_counter() - start) * 1e6)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,4,16", help="comma list: sequences a step (beams count)")
    parser.add_argument("--keys", default="32,64", help="comma list: cached positions attended to")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head_size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="few rounds: checks the script runs")
    args = parser.parse_args()
    rounds = 3 if args.quick else args.rounds
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    machine = bench_cpu_engines.machine()
    print(f"{machine['processor']}, {torch.get_num_threads()} thread(s), torch {torch.__version__}")
    print(f"one query position, {args.heads} heads of {args.head_size}; microseconds a call, median of {rounds}")
    print(f"{'batch':>5} {'keys':>5} {'memory':>6} {'SDPA':>8} {'two matmuls':>12} {'matmuls / SDPA':>15}")
    results = []
    with torch.inference_mode():
        for batch in (int(b) for b in args.batches.split(",")):
            for length in (int(n) for n in args.keys.split(",")):
                shape = (batch, args.heads, length, args.head_size)
                query = torch.randn(batch, args.heads, 1, args.head_size)
                keys, values = torch.randn(shape), torch.randn(shape)
                functions = attention_functions(query, keys, values, args.head_size**-0.5)
                outputs = [function() for function in functions.values()]
                torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
                for cold in (True, False):
                    micros = call_times(functions, rounds, cold)
                    ratio = micros["two matmuls"] / micros["SDPA"]
                    memory = "cold" if cold else "hot"
                    print(f"{batch:5d} {length:5d} {memory:>6} {micros['SDPA']:8.1f} {micros['two matmuls']:12.1f} "
                          f"{ratio:15.2f}")  # fmt: skip
                    results.append({"batch": batch, "keys": length, "memory": memory, **micros})
    return results


if __name__ == "__main__":
    main()
