"""What a decoding step costs beyond its arithmetic: Python, module calls, checks and small operators.

    python benchmarks/bench_step_overhead.py              # d_model 16 at the base depth (6 + 6 layers), one thread
    python benchmarks/bench_step_overhead.py --quick      # fewer repetitions, to check the script

With d_model 16 the products and attention take next to nothing, so the time of a one-position decoding step over
a cache of `--cached` positions is the overhead that every model size pays each step. Times, interleaved round by
round, the step of: the plain model; the model after `optimize_for_cpu_inference` but with the plain decoder stack
(its layers are `InferenceDecoderLayer`s); the model after `optimize_for_cpu_inference` (the stack an
`InferenceDecoder` too). Prints microseconds a step (median over rounds of the mean over `--steps` steps) and the
processor and thread count. The same weights throughout; the script checks that the three give the same logits.
"""

from __future__ import annotations

import argparse
import copy
import sys
import statistics
import time
from pathlib import Path

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration
from hf_vanilla_transformer import cpu_inference

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cpu_engines  # noqa: E402


def step_function(model, source, mask, cached: int):
    """A function running one decoding step after `cached` positions, the cache kept at that length."""
    config = model.config
    encoder = model.get_encoder()(input_ids=source, attention_mask=mask)
    cache = EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
    start = torch.full((source.shape[0], 1), config.decoder_start_token_id)
    for _ in range(cached):
        model(encoder_outputs=encoder, attention_mask=mask, decoder_input_ids=start, cache=cache, use_cache=True)

    def step():
        out = model(encoder_outputs=encoder, attention_mask=mask, decoder_input_ids=start, cache=cache, use_cache=True)
        cache.self_attention_cache.crop(-1)  # back to `cached` positions for the next step
        return out.logits

    return step


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--cached", type=int, default=32, help="target positions already in the cache")
    parser.add_argument("--source", type=int, default=32, help="source tokens")
    parser.add_argument("--steps", type=int, default=500, help="steps a round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="few steps and rounds: checks the script runs")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = 20, 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = VanillaTransformerConfig(
        d_model=16, num_heads=2, d_ff=32, encoder_layers=args.layers, decoder_layers=args.layers, vocab_size=64
    )
    model = VanillaTransformerForConditionalGeneration(config).eval()
    source = torch.randint(3, 64, (1, args.source))
    mask = torch.ones_like(source)

    optimized = cpu_inference.optimize_for_cpu_inference(copy.deepcopy(model))
    decoder = optimized.model.decoder
    # name: (model, the class of the optimized model's decoder stack while this variant runs)
    setups = {
        "plain": (model, cpu_inference.InferenceDecoder),
        "inference layers, plain stack": (optimized, cpu_inference.VanillaTransformerDecoder),
        "inference layers and stack": (optimized, cpu_inference.InferenceDecoder),
    }
    with torch.inference_mode():
        steps, reference = {}, None
        for name, (variant, stack) in setups.items():
            decoder.__class__ = stack
            steps[name] = step_function(variant, source, mask, args.cached)
            logits = steps[name]()
            reference = logits if reference is None else reference
            torch.testing.assert_close(logits, reference)
        times = {name: [] for name in setups}
        for _ in range(args.rounds):
            for name, (_, stack) in setups.items():
                decoder.__class__ = stack
                steps[name]()
                start = time.perf_counter()
                for _ in range(args.steps):
                    steps[name]()
                times[name].append((time.perf_counter() - start) / args.steps * 1e6)
    machine = bench_cpu_engines.machine()
    print(f"{machine['processor']}, {torch.get_num_threads()} thread(s), torch {torch.__version__}")
    layers = f"{args.layers} + {args.layers} layers"
    print(f"d_model 16, {layers}, {args.cached} cached positions, {args.source} source tokens")
    results = {name: statistics.median(values) for name, values in times.items()}
    for name, micros in results.items():
        print(f"{name:32s} {micros:8.1f} microseconds a step")
    return results


if __name__ == "__main__":
    main()
