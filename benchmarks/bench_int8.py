"""int8 decoding on the CPU: this package's `quantize_int8` (and the same model saved and reloaded with `load_int8`)
against transformers' own int8 route, `from_pretrained(..., quantization_config=TorchAoConfig(...))` with torchao's
dynamic int8 activation x int8 weight config, on the same float32 weights.

    pip install torchao          # the transformers route needs it; nothing else here does
    python benchmarks/bench_int8.py --rounds 5
    python benchmarks/bench_int8.py --quick      # small sizes, to check the script

Builds the base model (d_model 512, 6+6 layers, vocabulary 8000, random weights), saves it, loads it the three
ways, checks that the reloaded int8 model generates exactly the tokens of the one it was saved from and counts how
many tokens the torchao model shares with ours, then times `generate()` (greedy batch 1, beam 4, greedy batch 16)
interleaved, round by round, and prints new tokens/s and the median per-round ratio to `quantize_int8`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

import torch

import bench_models


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few tokens")
    parser.add_argument("--output", help="write the figures to this JSON file")
    args = parser.parse_args()

    from torchao.quantization import Int8DynamicActivationInt8WeightConfig
    from transformers import AutoModelForSeq2SeqLM, TorchAoConfig

    from hf_vanilla_transformer.quantization import load_int8, quantize_int8

    torch.set_num_threads(args.threads)
    sizes = {"d_model": 512, "d_ff": 2048, "heads": 8, "layers": 6}
    vocab, source_length, new_tokens = 8000, 32, 64
    if args.quick:
        sizes, vocab, source_length, new_tokens = {"d_model": 64, "d_ff": 128, "heads": 4, "layers": 2}, 500, 8, 8
    torch.manual_seed(0)
    fp32 = bench_models.vanilla_model(sizes, vocab).eval()
    with tempfile.TemporaryDirectory() as folder:
        fp32.save_pretrained(f"{folder}/fp32")
        ours = quantize_int8(fp32)
        ours.save_pretrained(f"{folder}/int8")
        models = {
            "quantize_int8": ours,
            "load_int8": load_int8(f"{folder}/int8"),
            "torchao": AutoModelForSeq2SeqLM.from_pretrained(
                f"{folder}/fp32", quantization_config=TorchAoConfig(Int8DynamicActivationInt8WeightConfig())
            ).eval(),
        }

    device = torch.device("cpu")
    cases = {"greedy b1": (1, 1), "beam 4": (1, 4), "greedy b16": (16, 1)}
    results = {"threads": args.threads, "sizes": sizes, "vocab": vocab, "new_tokens": new_tokens, "cases": {}}
    for case, (batch, beams) in cases.items():
        fns = {
            name: bench_models.generate_fn("vanilla", model, batch, source_length, new_tokens, beams, vocab, device)
            for name, model in models.items()
        }
        tokens = {name: fn() for name, fn in fns.items()}
        if not torch.equal(tokens["load_int8"], tokens["quantize_int8"]):
            raise SystemExit(f"{case}: the reloaded int8 model generated other tokens than the one it was saved from")
        shared = (tokens["torchao"] == tokens["quantize_int8"]).float().mean().item()
        times = bench_models.interleaved(fns, rounds=args.rounds, warmup=1, device=device)
        speeds = {name: batch * new_tokens / statistics.median(t) for name, t in times.items()}
        ratios = {
            name: statistics.median(a / b for a, b in zip(times["quantize_int8"], t)) for name, t in times.items()
        }
        results["cases"][case] = {
            "new_tokens_per_s": {k: round(v, 1) for k, v in speeds.items()},
            "speed_vs_quantize_int8": {k: round(v, 3) for k, v in ratios.items()},
            "torchao_tokens_shared_with_quantize_int8": round(shared, 3),
        }
        row = "  ".join(f"{name} {speeds[name]:7.1f} tok/s ({ratios[name]:.2f}x)" for name in models)
        print(f"{case:11s} {row}  torchao tokens equal to ours: {100 * shared:.0f}%")
    if args.output:
        with open(args.output, "w") as file:
            json.dump(results, file, indent=2)
    return results


if __name__ == "__main__":
    main()
