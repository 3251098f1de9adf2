"""Why the model computes few-row linear layers as (W x^T)^T on the CPU.

    python benchmarks/bench_linear_rows.py              # the base model's decoder shapes, fp32
    python benchmarks/bench_linear_rows.py --rounds 9   # more rounds where the machine is noisy

A decoding step multiplies a handful of rows (the batch, or the beams) by every weight matrix. For so few rows
`x @ W.T` (what `nn.Linear` computes) and `(W @ x.T).T` are the same products, but MKL streams W at different
speeds in the two orientations. For each row count and weight shape this prints milliseconds per product in both
orientations (median over rounds, the two interleaved) and their ratio; `linear()` in the model takes the second
form for 2 to 32 rows.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def product_times(rows: int, out_features: int, in_features: int, rounds: int, copies: int = 16) -> tuple[float, float]:
    # Several weights of the same shape, used in turn, so that each product reads its weight from memory as the
    # model's layers do, not from a warm cache.
    weights = [torch.randn(out_features, in_features) for _ in range(copies)]
    biases = [torch.randn(out_features) for _ in range(copies)]
    x = torch.randn(rows, in_features)

    def plain():
        for weight, bias in zip(weights, biases):
            torch.nn.functional.linear(x, weight, bias)

    def transposed():
        for weight, bias in zip(weights, biases):
            torch.addmm(bias.unsqueeze(1), weight, x.t()).t().contiguous()

    times = {plain: [], transposed: []}
    for round_index in range(rounds + 1):
        for fn in (plain, transposed) if round_index % 2 else (transposed, plain):
            start = time.perf_counter()
            fn()
            if round_index:  # round 0 warms up
                times[fn].append((time.perf_counter() - start) / copies * 1e3)
    return statistics.median(times[plain]), statistics.median(times[transposed])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,2,4,8,16,32,64", help="comma list of row counts")
    parser.add_argument("--d_model", type=int, default=512)
    parser.add_argument("--d_ff", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    d, f = args.d_model, args.d_ff
    shapes = [(d, d), (f, d), (d, f), (args.vocab, d)]  # (out, in): attention, FFN in, FFN out, output layer
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32; ms per product, x W^T -> (W x^T)^T")
    header = "rows  " + "".join(f"{f'{o}x{i}':>26}" for o, i in shapes)
    print(header)
    with torch.inference_mode():
        for rows in (int(r) for r in args.rows.split(",")):
            cells = []
            for out_features, in_features in shapes:
                plain, transposed = product_times(rows, out_features, in_features, args.rounds)
                cells.append(f"{plain:7.3f} -> {transposed:6.3f} ({plain / transposed:4.2f}x)")
            print(f"{rows:<6}" + "".join(f"{cell:>26}" for cell in cells))


if __name__ == "__main__":
    main()
