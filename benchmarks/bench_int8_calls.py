"""What an int8 product costs per call through each of torch's entry points, one row of input (a greedy batch-1
decoding step), and the bytes `Int8Linear` keeps beside the kernel's packed copy in the base model.

    python benchmarks/bench_int8_calls.py              # one thread
    python benchmarks/bench_int8_calls.py --threads 2

Prints, for the base model's layer shapes, the fastest and the median microseconds per call over interleaved
repetitions of: torch's public entry point `torch.ops.quantized.linear_dynamic.default` (what `Int8Linear` calls),
the same overload's private C++ callable `._op` (which skips a Python scan of the arguments), the module
`torch.ao.nn.quantized.dynamic.Linear`, a `torch._int_mm` route (the input quantised in Python as fbgemm does it,
an int8 x int8 -> int32 product, the correction and scales), and float32 `F.linear`.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn


def interleaved(fns: dict, calls: int, repetitions: int) -> dict[str, tuple[float, float]]:
    for fn in fns.values():
        for _ in range(20):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repetitions):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def entry_points(in_features: int, out_features: int) -> dict:
    linear = nn.Linear(in_features, out_features).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notice for its eager-mode quantisation
        dynamic = torch.ao.quantization.quantize_dynamic(
            nn.Sequential(linear), {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8
        )[0]
    packed = torch.ops.quantized.linear_prepack(dynamic.weight(), dynamic.bias())
    int8 = dynamic.weight().int_repr()
    scales, columns, row_sums = dynamic.weight().q_per_channel_scales().float(), int8.t().contiguous(), int8.sum(1)
    x = torch.randn(1, 1, in_features)
    overload = torch.ops.quantized.linear_dynamic.default

    def int_mm():
        rows = x.reshape(-1, in_features)
        low, high = torch.aminmax(rows)
        scale = (high.clamp(min=0) - low.clamp(max=0)) / 127  # 7 bits, as fbgemm's reduce_range
        zero = torch.round(-low.clamp(max=0) / scale)
        quantized = torch.clamp(torch.round(rows / scale) + zero, 0, 127).to(torch.int8)
        padded = F.pad(quantized, (0, 0, 0, 17 - quantized.shape[0]))  # _int_mm takes more than 16 rows
        product = torch._int_mm(padded, columns)[: rows.shape[0]]
        return (product - zero.to(torch.int32) * row_sums.to(torch.int32)) * (scale * scales) + linear.bias

    return {
        "torch.ops.quantized.linear_dynamic.default (public)": lambda: overload(x, packed, True),
        "linear_dynamic.default._op (private)": lambda: overload._op(x, packed, True),
        "torch.ao.nn.quantized.dynamic.Linear": lambda: dynamic(x),
        "torch._int_mm route": int_mm,
        "float32 F.linear": lambda: F.linear(x, linear.weight, linear.bias),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repetitions", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        for shape in [(512, 512), (512, 1536), (2048, 512), (512, 8000)]:
            results = interleaved(entry_points(*shape), 100 if shape[1] > 2048 else 300, args.repetitions)
            print(f"{shape[0]} -> {shape[1]}, us per call (fastest, median):")
            for name, (fastest, median) in results.items():
                print(f"  {name}: {fastest:.1f}, {median:.1f}")

    import bench_models
    from hf_vanilla_transformer.quantization import Int8Linear, quantize_int8

    sizes = {"d_model": 512, "d_ff": 2048, "heads": 8, "layers": 6}
    model = quantize_int8(bench_models.vanilla_model(sizes, 8000).eval(), inplace=True)
    held = sum(m.weight.numel() for m in model.modules() if isinstance(m, Int8Linear))
    print(f"base model, vocabulary 8000: {held / 2**20:.1f} MiB of int8 weights kept beside the kernel's packed copy")


if __name__ == "__main__":
    main()
