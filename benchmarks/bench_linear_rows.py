"""Why `optimize_for_cpu_inference` computes few-row linear layers its own way on the CPU.

    python benchmarks/bench_linear_rows.py              # the base model's decoder shapes, fp32
    python benchmarks/bench_linear_rows.py --rounds 9   # more rounds where the machine is noisy
    python benchmarks/bench_linear_rows.py --rows 1,4,16 --threads 1

A decoding step multiplies a handful of rows (the batch, or the beams) by every weight matrix. For so few rows
these give the same products, but MKL streams W at different speeds:
- x W^T, what `nn.Linear` computes;
- (W x^T)^T, the transposed orientation;
- row blocks: W split by output rows into one block per thread, the blocks' products run as one batched
  product (for one row; MKL's matrix-vector product keeps to one core);
- oneDNN's linear over the weight as a oneDNN tensor in the plain layout (`torch.utils.mkldnn.to_mkldnn`, the
  public route to the other kernel library torch ships for the CPU);
- x W^T over W stored transposed in memory (the same tensor, its `t()` contiguous), so that MKL's one-row product
  runs along rows of out_features.
For each row count and weight shape this prints the milliseconds of x W^T per product (median over rounds, the
five interleaved) and the speed-up of the other four over it; `RowBlockLinear` chooses by timing at first use
among x W^T, row blocks and W stored transposed for 1 row, and between x W^T and (W x^T)^T for 2 to 32.

    python benchmarks/bench_linear_rows.py --rows 1,16 --prepacked

adds two more: oneDNN's product over a weight reordered once into its blocked layout for that row count (the kernel
`torch.compile`'s freezing uses where shapes vary), and MKL's packed product (what it uses where they are fixed).
They are reached only through private operators (`torch.ops.mkldnn._reorder_linear_weight` and `_linear_pointwise`,
`torch.ops.mkl._mkl_reorder_linear_weight` and `_mkl_linear`): timed to show what the CPU could do, not used by the
package.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from hf_vanilla_transformer.cpu_inference import row_block_product


PRODUCTS = ("x W^T", "(W x^T)^T", "row blocks", "oneDNN", "x W^T, W stored transposed")
PREPACKED = ("oneDNN prepacked (private)", "MKL packed (private)")


def products(weight: torch.Tensor, bias: torch.Tensor, prepacked_rows: int | None = None) -> list:
    """The five ways of computing x W^T + b for a few rows x, each a function of x, in the order of PRODUCTS; with
    `prepacked_rows`, the two of PREPACKED too, their weights laid out for that many rows."""
    with warnings.catch_warnings():  # the utility's modules are TorchScript, which warns that it is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.utils import mkldnn

        packed = mkldnn.to_mkldnn(_linear(weight, bias))
    fns = [
        lambda x: torch.nn.functional.linear(x, weight, bias),
        lambda x: torch.addmm(bias.unsqueeze(1), weight, x.t()).t().contiguous(),
        # as RowBlockLinear computes one row, transposed back as it would need for more
        lambda x: row_block_product(weight, bias, x.t(), torch.get_num_threads()).t().contiguous(),
        packed,
        # what RowBlockLinear computes once it stores W transposed: the same tensor, its t() contiguous
        lambda x, transposed=weight.t().contiguous().t(): torch.nn.functional.linear(x, transposed, bias),
    ]
    if prepacked_rows is not None:
        blocked = torch.ops.mkldnn._reorder_linear_weight(weight, prepacked_rows)
        fns.append(lambda x: torch.ops.mkldnn._linear_pointwise(x, blocked, bias, "none", [], ""))
        if torch.backends.mkl.is_available():
            packed_mkl = torch.ops.mkl._mkl_reorder_linear_weight(weight, prepacked_rows)
            fns.append(lambda x: torch.ops.mkl._mkl_linear(x, packed_mkl, weight, bias, prepacked_rows))
    return fns


def product_times(
    rows: int, out_features: int, in_features: int, rounds: int, copies: int = 16, prepacked: bool = False
) -> list[float]:
    """Milliseconds per product of each of PRODUCTS (and PREPACKED) (median over rounds, interleaved). Several
    weights of the same shape are used in turn, so that each product reads its weight from memory as the model's
    layers do, not from a warm cache."""
    weights = [torch.randn(out_features, in_features) for _ in range(copies)]
    biases = [torch.randn(out_features) for _ in range(copies)]
    x = torch.randn(rows, in_features)
    by_weight = [products(weight, bias, rows if prepacked else None) for weight, bias in zip(weights, biases)]
    fns = [[fns[i] for fns in by_weight] for i in range(len(by_weight[0]))]  # each: one product over every weight
    times = [[] for _ in fns]
    for round_index in range(rounds + 1):
        order = range(len(fns)) if round_index % 2 else reversed(range(len(fns)))
        for i in order:
            start = time.perf_counter()
            for product in fns[i]:
                product(x)
            if round_index:  # round 0 warms up
                times[i].append((time.perf_counter() - start) / copies * 1e3)
    return [statistics.median(t) for t in times]


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> torch.nn.Linear:
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], device="meta")
    layer.weight, layer.bias = torch.nn.Parameter(weight), torch.nn.Parameter(bias)
    return layer


def read_bandwidth_gbs(megabytes: int = 256, rounds: int = 9, reduce=statistics.median) -> float:
    """GB/s of summing a float32 tensor far larger than the caches: about what any product can stream W at, from
    the `reduce` (median, or min for the best) of `rounds` timings."""
    data = torch.ones(megabytes * 2**20 // 4)
    data.sum()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        data.sum()
        times.append(time.perf_counter() - start)
    return data.numel() * 4 / reduce(times) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,2,4,8,16,32,64", help="comma list of row counts")
    parser.add_argument("--d_model", type=int, default=512)
    parser.add_argument("--d_ff", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prepacked", action="store_true", help=f"also time {' and '.join(PREPACKED)}")
    parser.add_argument("--threads", type=int, help="torch's thread count (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d, f = args.d_model, args.d_ff
    # (out, in): attention, fused Q/K/V, FFN in, FFN out, output layer
    shapes = [(d, d), (3 * d, d), (f, d), (d, f), (args.vocab, d)]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32. Each cell: ms per product as x W^T, "
        "then the speed-up of (W x^T)^T, of row blocks, of oneDNN and of x W^T over W stored transposed over it"
        + (f", of {PREPACKED[0]} and of {PREPACKED[1]}" if args.prepacked else "")
    )
    print(f"memory read bandwidth (torch.sum over 256 MB): {read_bandwidth_gbs():.1f} GB/s")
    width = 50 if args.prepacked else 38
    print("rows  " + "".join(f"{f'{o}x{i}':>{width}}" for o, i in shapes))
    with torch.inference_mode():
        for rows in (int(r) for r in args.rows.split(",")):
            cells = []
            for out_features, in_features in shapes:
                plain, *others = product_times(rows, out_features, in_features, args.rounds, prepacked=args.prepacked)
                cells.append(f"{plain:7.3f} " + " ".join(f"{plain / other:4.2f}x" for other in others))
            print(f"{rows:<6}" + "".join(f"{cell:>{width}}" for cell in cells))


if __name__ == "__main__":
    main()
