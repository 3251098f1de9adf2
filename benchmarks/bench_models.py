"""Speed and memory of this package's Transformer against transformers' Marian and torch.nn.Transformer.

    python benchmarks/bench_models.py                      # CPU, fp32, the paper's base sizes
    python benchmarks/bench_models.py --quick              # small sizes, to check the script
    python benchmarks/bench_models.py --device cuda --dtype bf16 --compile   # on a GPU
    python benchmarks/bench_models.py --baseline a9ffa01   # also the package as it was at a git commit

On the CPU in fp32, decoding also times the opt-in paths: `vanilla-cpu` (optimize_for_cpu_inference) and
`vanilla-int8` (quantize_int8). These decoding rows share one process and are for A/B work on the code; the CPU
decoding figures the README gives, against Marian and CTranslate2, come from `bench_cpu_engines.py`, which times each
engine in a process of its own (CTranslate2 left spinning threads behind that slowed the torch models timed after it).
`--baseline REF` adds the package at git commit REF under the name `vanilla@REF` (and `vanilla@REF-int8`) to the
same interleaved rounds, so a change is measured against the code before it.

All models get identical sizes (d_model 512, 6+6 layers, 8 heads, d_ff 2048, ReLU, post-LN, one shared
vocabulary). Each measurement runs round by round, the models interleaved within a round, so machine
noise hits them alike; the table gives the median, the min-max, and the median of the per-round ratio to
Marian. Results also go to a JSON file (--output).
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

MODELS = ("vanilla", "marian", "torch")


# --- The three models, same sizes ---


def load_baseline(ref: str):
    """The package as it was at git commit `ref`, imported as `hf_vanilla_transformer_baseline` so that both run in
    one process; the Auto classes stay this checkout's."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(["git", "-C", str(root), "archive", ref, "hf_vanilla_transformer"], capture_output=True)
    if done.returncode:
        raise SystemExit(f"--baseline {ref}: git archive failed: {done.stderr.decode().strip()}")
    folder = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(folder, filter="data")
    (folder / "hf_vanilla_transformer").rename(folder / "hf_vanilla_transformer_baseline")
    sys.path.insert(0, str(folder))
    baseline = importlib.import_module("hf_vanilla_transformer_baseline")
    # Its import registered its classes under the shared model type: give the Auto classes and pipelines back.
    import hf_vanilla_transformer as current

    current.register_with_transformers()
    return baseline


def vanilla_model(sizes: dict, vocab: int, attn: str = "sdpa", package=None):
    if package is None:
        import hf_vanilla_transformer as package

    config = package.VanillaTransformerConfig(
        vocab_size=vocab,
        d_model=sizes["d_model"],
        d_ff=sizes["d_ff"],
        num_heads=sizes["heads"],
        encoder_layers=sizes["layers"],
        decoder_layers=sizes["layers"],
        max_position_embeddings=512,
    )
    config._attn_implementation = attn
    return package.VanillaTransformerForConditionalGeneration(config)


def marian_model(sizes: dict, vocab: int, attn: str = "sdpa"):
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=vocab,
        d_model=sizes["d_model"],
        encoder_ffn_dim=sizes["d_ff"],
        decoder_ffn_dim=sizes["d_ff"],
        encoder_attention_heads=sizes["heads"],
        decoder_attention_heads=sizes["heads"],
        encoder_layers=sizes["layers"],
        decoder_layers=sizes["layers"],
        activation_function="relu",
        scale_embedding=True,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=1,
        decoder_start_token_id=1,
        forced_eos_token_id=None,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        attn_implementation=attn,
    )
    return MarianMTModel(config)


class TorchTransformer(nn.Module):
    """torch.nn.Transformer with token embeddings (x sqrt(d_model)), sinusoidal positions and a tied output layer."""

    def __init__(self, sizes: dict, vocab: int):
        super().__init__()
        d = sizes["d_model"]
        self.embed = nn.Embedding(vocab, d)
        self.transformer = nn.Transformer(
            d_model=d,
            nhead=sizes["heads"],
            num_encoder_layers=sizes["layers"],
            num_decoder_layers=sizes["layers"],
            dim_feedforward=sizes["d_ff"],
            dropout=0.1,
            activation="relu",
            batch_first=True,
            norm_first=False,
        )
        self.out = nn.Linear(d, vocab, bias=False)
        self.out.weight = self.embed.weight
        from hf_vanilla_transformer.modeling_vanilla_transformer import sinusoid_table

        self.register_buffer("positions", sinusoid_table(1024, d), persistent=False)
        self.scale = math.sqrt(d)

    def _embed(self, ids):
        return self.embed(ids) * self.scale + self.positions[: ids.shape[1]]

    def encode(self, src):
        return self.transformer.encoder(self._embed(src))

    def decode(self, tgt, memory):
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], device=tgt.device)
        return self.out(self.transformer.decoder(self._embed(tgt), memory, tgt_mask=mask, tgt_is_causal=True))

    def forward(self, src, tgt):
        return self.decode(tgt, self.encode(src))


BASELINES = {}  # "vanilla@REF" -> the package at REF (filled by --baseline)


def build(name: str, sizes: dict, vocab: int):
    if name == "vanilla":
        return vanilla_model(sizes, vocab)
    if name in BASELINES:
        return vanilla_model(sizes, vocab, package=BASELINES[name])
    if name == "marian":
        return marian_model(sizes, vocab)
    return TorchTransformer(sizes, vocab)


# --- What is measured ---


def make_batch(batch: int, src_len: int, tgt_len: int, vocab: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(4, vocab, (batch, src_len), generator=g).to(device),
        "labels": torch.randint(4, vocab, (batch, tgt_len), generator=g).to(device),
    }


def train_step_fn(name: str, model, batch: dict, autocast_dtype) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    device_type = batch["input_ids"].device.type

    def step():
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            if name == "torch":
                labels = batch["labels"]
                decoder_inputs = torch.cat([torch.ones_like(labels[:, :1]), labels[:, :-1]], dim=1)
                logits = model(batch["input_ids"], decoder_inputs)
                loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
            else:
                loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def generate_fn(
    name: str,
    model,
    batch: int,
    src_len: int,
    new_tokens: int,
    beams: int,
    vocab: int,
    device,
    static: bool = False,
    autocast_dtype=None,
):
    source = torch.randint(4, vocab, (batch, src_len), generator=torch.Generator().manual_seed(1)).to(device)
    model.eval()
    if name == "torch":
        if beams > 1:
            return None  # nn.Transformer has no beam search

        @torch.inference_mode()
        def greedy():
            # nn.Transformer keeps no cache: every step re-runs the decoder over the whole prefix.
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                memory = model.encode(source)
                out = torch.ones(batch, 1, dtype=torch.long, device=device)
                for _ in range(new_tokens):
                    next_token = model.decode(out, memory)[:, -1].argmax(-1, keepdim=True)
                    out = torch.cat([out, next_token], dim=1)
            return out

        return greedy

    kwargs = dict(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        num_beams=beams,
        do_sample=False,
        early_stopping=False,
        length_penalty=1.0,
    )
    if static:  # on a GPU, generate() then compiles the decoding step itself
        kwargs["cache_implementation"] = "static"

    @torch.inference_mode()
    def run():
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return model.generate(input_ids=source, attention_mask=torch.ones_like(source), **kwargs)

    return run


def timed(fn: Callable[[], object], device, clock: Callable[[], float] = time.perf_counter) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = clock()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - start


def interleaved(
    fns: dict[str, Callable], rounds: int, warmup: int, device, clock: Callable[[], float] = time.perf_counter
) -> dict[str, list[float]]:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for round_index in range(rounds):
        # Odd rounds run the models in reverse order, so no model always follows the same neighbour.
        order = list(fns.items()) if round_index % 2 == 0 else list(fns.items())[::-1]
        for name, fn in order:
            times[name].append(timed(fn, device, clock))
    return times


# --- The machine's limit and the model's FLOPs ---


def decode_linear_floor_ms(sizes: dict, vocab: int, batch: int, own_way: bool, rounds: int = 7) -> float:
    """Milliseconds for just the linear layers of one decoding step: every decoder projection whose input changes
    each step (self-attention Q, K, V, O; cross-attention Q, O; the two FFN layers) and the output layer, each with
    its own weights so they stream from memory as in the model. `own_way=False` times `nn.Linear` (x W^T), as
    Marian computes them; `own_way=True` times this package's opt-in `RowBlockLinear` (row blocks for 1 row,
    (W x^T)^T for 2 to 32). No fp32 model that computes its products that way can decode a step faster."""
    from hf_vanilla_transformer.cpu_inference import RowBlockLinear

    d, f, n = sizes["d_model"], sizes["d_ff"], sizes["layers"]
    shapes = n * ([(d, d)] * 6 + [(d, f), (f, d)]) + [(d, vocab)]
    layers = [(RowBlockLinear if own_way else nn.Linear)(i, o) for i, o in shapes]
    inputs = [torch.randn(batch, i) for i, _ in shapes]

    def step():
        for layer, x in zip(layers, inputs):
            layer(x)

    with torch.inference_mode():
        step()
        return statistics.median(timed(step, torch.device("cpu")) for _ in range(rounds)) * 1e3


def gemm_flops(m: int, k: int, n: int, device, dtype, repeats: int = 30) -> float:
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = min(timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * m * k * n / best


# Dense bf16 tensor-core peaks from NVIDIA's data sheets (half the "with sparsity" figures), in TFLOP/s. The first
# name contained in torch.cuda.get_device_name() wins, so the PCIe H100 comes before the SXM one.
SPEC_BF16_TFLOPS = {"H100 PCIe": 756.5, "H100": 989.4, "H200": 989.4, "A100": 312.0}


def spec_peak_tflops(device_name: str) -> float | None:
    return next((peak for name, peak in SPEC_BF16_TFLOPS.items() if name in device_name), None)


def analytic_train_flops(sizes: dict, vocab: int, batch: int, src: int, tgt: int) -> float:
    """Matmul FLOPs of one training step (forward x 3 for forward + backward), counting attention scores."""
    d, f, n = sizes["d_model"], sizes["d_ff"], sizes["layers"]
    s, t = batch * src, batch * tgt
    enc = n * (s * (4 * d * d + 2 * d * f) + 2 * batch * src * src * d)
    dec_self = n * (t * 4 * d * d + 2 * batch * tgt * tgt * d)
    dec_cross = n * (t * 2 * d * d + s * 2 * d * d + 2 * batch * tgt * src * d)
    dec_ffn = n * t * 2 * d * f
    head = t * d * vocab
    forward = 2 * (enc + dec_self + dec_cross + dec_ffn + head)
    return 3 * forward


def counted_train_flops(sizes: dict, vocab: int, batch: int, src: int, tgt: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = vanilla_model(sizes, vocab)
    model.config.dropout = 0.0
    data = make_batch(batch, src, tgt, vocab, torch.device("cpu"))
    with FlopCounterMode(display=False) as counter:
        model(**data).loss.backward()
    return float(counter.get_total_flops())


# --- Peak memory of a fresh process ---


def peak_memory_child(name: str, sizes: dict, vocab: int, batch: int, src: int, tgt: int) -> None:
    device = torch.device("cpu")
    model = build(name, sizes, vocab)
    step = train_step_fn(name, model, make_batch(batch, src, tgt, vocab, device), None)
    step()
    step()
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so a child would report its parent's peak.
    with open("/proc/self/status") as fh:
        peak_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    print(json.dumps({"peak_rss_mb": peak_kb / 1024}))


def peak_memory(name: str, sizes: dict, vocab: int, batch: int, src: int, tgt: int, repeats: int = 3) -> dict:
    """Peak RSS of `repeats` fresh processes: how much glibc keeps of freed memory varies from one to the next."""
    peaks = [peak_memory_once(name, sizes, vocab, batch, src, tgt) for _ in range(repeats)]
    return {"median": statistics.median(peaks), "min": min(peaks), "max": max(peaks)}


def peak_memory_once(name: str, sizes: dict, vocab: int, batch: int, src: int, tgt: int) -> float:
    code = (
        "import json, sys; sys.path.insert(0, %r); import bench_models as b; "
        "b.peak_memory_child(%r, json.loads(%r), %d, %d, %d, %d)"
        % (os.path.dirname(os.path.abspath(__file__)), name, json.dumps(sizes), vocab, batch, src, tgt)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def cuda_peak_memory(name: str, sizes: dict, vocab: int, data: dict, param_dtype, autocast_dtype) -> float:
    """Peak allocated GPU memory (MB) of a model built and trained two steps in this process."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = build(name, sizes, vocab).to(device=data["input_ids"].device, dtype=param_dtype)
    step = train_step_fn(name, model, data, autocast_dtype)
    step()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20
    del model, step
    return peak


# --- Report ---


def summarize(times: dict[str, list[float]], work: float) -> dict:
    """Throughput (work / second) per model: median, min, max; and per-round ratio to Marian."""
    rows = {}
    for name, values in times.items():
        rates = [work / t for t in values]
        row = {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}
        if "marian" in times and name != "marian":
            row["ratio_to_marian"] = statistics.median(m / t for t, m in zip(values, times["marian"]))
        rows[name] = row
    return rows


def print_table(results: dict) -> None:
    print(f"\n{'measurement':38s} {'model':20s} {'median':>10s} {'min-max':>19s} {'x Marian':>9s}")
    for key, rows in results["throughput"].items():
        for name, row in rows.items():
            ratio = f"{row['ratio_to_marian']:.2f}" if "ratio_to_marian" in row else ("1.00" if name == "marian" else "")
            print(f"{key:38s} {name:20s} {row['median']:10.1f} {row['min']:9.1f}-{row['max']:<9.1f} {ratio:>9s}")
    memory = results.get("memory_mb", {})
    for key, value in memory.items():
        ratio = f"{value['median'] / memory['marian']['median']:.2f}" if "marian" in memory else ""
        print(f"{'peak RSS, 2 training steps (MB)':38s} {key:20s} {value['median']:10.0f} "
              f"{value['min']:9.0f}-{value['max']:<9.0f} {ratio:>9s}")
    gpu_memory = results.get("gpu_memory_mb", {})
    for key, value in gpu_memory.items():
        ratio = f"{value / gpu_memory['marian']:.2f}" if "marian" in gpu_memory else ""
        print(f"{'peak GPU memory, 2 training steps (MB)':38s} {key:20s} {value:10.0f} {'':19s} {ratio:>9s}")
    for key, errors in results.get("errors", {}).items():
        for name, error in errors.items():
            print(f"{key:38s} {name:20s} failed: {error}")
    limit = results["machine"]
    print(f"\nGEMM peak {limit['gemm_peak_gflops']:.1f} GFLOP/s at {limit['gemm_peak_size']}^3; at the model's shapes: "
          + ", ".join(f"{k} {v:.1f}" for k, v in limit["gemm_model_shapes_gflops"].items()))
    if limit.get("spec_peak_tflops"):
        print(f"Data-sheet bf16 peak of the card: {limit['spec_peak_tflops']:.1f} TFLOP/s")
    for key, value in limit.get("decode_step_linear_floor_ms", {}).items():
        print(f"One decoding step's linear layers alone, {key}: {value:.1f} ms "
              f"(at most {int(key.split()[-1]) * 1e3 / value:.0f} rows/s for any fp32 model computing them so)")
    if "flop_check" in results:
        check = results["flop_check"]
        print(f"FLOPs per training step: analytic {check['analytic'] / 1e9:.1f} G, torch flop_counter "
              f"{check['flop_counter'] / 1e9:.1f} G")
    for label, table in (("MFU", results.get("mfu", {})), ("MFU against the data sheet", results.get("mfu_spec", {}))):
        for key, value in table.items():
            print(f"{label} {key}: " + ", ".join(f"{k} {v:.1%}" for k, v in value.items()))


def parse_shapes(text: str, vocab: int) -> list[tuple[int, int, int, int]]:
    """"64x32x32,16x128x128:32000" -> [(batch, source length, target length, vocabulary), ...]."""
    shapes = []
    for item in filter(None, text.split(",")):
        dims, _, item_vocab = item.partition(":")
        try:
            batch, src, tgt = (int(n) for n in dims.split("x"))
            shapes.append((batch, src, tgt, int(item_vocab) if item_vocab else vocab))
        except ValueError:
            raise SystemExit(f"--train_shapes: {item!r} is not BATCHxSOURCExTARGET[:VOCAB], e.g. 64x32x32 or 64x32x32:32000")
    return shapes


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "bf16-autocast", "fp16-autocast"), default="fp32")
    parser.add_argument(
        "--compile", action="store_true",
        help="torch.compile each model's forward for training; decode with a static cache, which generate() compiles.",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--large_vocab", type=int, default=32000, help="Vocabulary of the extra training row.")
    parser.add_argument(
        "--train_shapes",
        help="Training batches as BATCHxSOURCExTARGET[:VOCAB], comma-separated (default: 64x32x32, 16x128x128 and "
        "64x32x32 with --large_vocab; on a GPU also 128x128x128, 32768 tokens a step).",
    )
    parser.add_argument("--peak_tflops", type=float, help="The card's bf16 peak for MFU (default: known cards' data sheets).")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument(
        "--baseline", action="append", default=[], metavar="REF",
        help="Also time this package as it was at git commit REF (model vanilla@REF); may be repeated.",
    )
    parser.add_argument(
        "--skip", default="", help="Comma list of parts to skip: train,generate,memory,flops"
    )
    parser.add_argument("--quick", action="store_true", help="Tiny sizes and shapes: checks the script runs.")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice).")
    parser.add_argument("--output", default="benchmarks/results.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False).")
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}.")
    skip = set(args.skip.split(","))
    for ref in args.baseline:
        BASELINES[f"vanilla@{ref}"] = load_baseline(ref)
        names.append(f"vanilla@{ref}")
    sizes = {"d_model": 512, "d_ff": 2048, "heads": 8, "layers": 6}
    train_shapes = [(64, 32, 32, args.vocab), (16, 128, 128, args.vocab), (64, 32, 32, args.large_vocab)]
    if device.type == "cuda":
        train_shapes.append((128, 128, 128, args.vocab))
    gen_cases = [("greedy b1", 1, 1), ("greedy b16", 16, 1), ("beam4 b1", 1, 4)]
    new_tokens, src_len, gemm_size = 64, 32, 2048
    if args.quick:
        sizes = {"d_model": 64, "d_ff": 128, "heads": 4, "layers": 2}
        train_shapes = [(8, 16, 16, 500), (4, 32, 32, 500)]
        new_tokens, src_len, gemm_size = 8, 16, 256
        args.vocab = 500
    if args.train_shapes:
        train_shapes = parse_shapes(args.train_shapes, args.vocab)
    param_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    autocast = {"bf16-autocast": torch.bfloat16, "fp16-autocast": torch.float16}.get(args.dtype)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "device": device_name,
            "dtype": args.dtype,
            "compile": args.compile,
            "torch": torch.__version__,
            "spec_peak_tflops": args.peak_tflops or (spec_peak_tflops(device_name) if args.dtype != "fp32" else None),
        },
        "sizes": sizes,
        "throughput": {},
    }

    def save() -> None:  # after every part, so a run cut short still leaves what it measured
        if args.output:
            os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
            with open(args.output, "w") as fh:
                json.dump(results, fh, indent=2)

    gemm_dtype = torch.bfloat16 if args.dtype != "fp32" else torch.float32
    results["machine"]["gemm_peak_size"] = gemm_size
    results["machine"]["gemm_peak_gflops"] = gemm_flops(gemm_size, gemm_size, gemm_size, device, gemm_dtype) / 1e9
    d, f = sizes["d_model"], sizes["d_ff"]
    tokens = train_shapes[0][0] * train_shapes[0][1]
    results["machine"]["gemm_model_shapes_gflops"] = {
        f"{tokens}x{d}x{d}": gemm_flops(tokens, d, d, device, gemm_dtype) / 1e9,
        f"{tokens}x{d}x{f}": gemm_flops(tokens, d, f, device, gemm_dtype) / 1e9,
        f"{tokens}x{f}x{d}": gemm_flops(tokens, f, d, device, gemm_dtype) / 1e9,
        f"{tokens}x{d}x{args.vocab}": gemm_flops(tokens, d, args.vocab, device, gemm_dtype) / 1e9,
    }
    save()

    def prepared(name, vocab, compile_forward):
        torch.manual_seed(0)
        model = build(name, sizes, vocab).to(device=device, dtype=param_dtype)
        if compile_forward:
            model.forward = torch.compile(model.forward)
        return model

    def runnable(key: str, fns: dict) -> dict:
        """The functions that run once without error; the others' errors go to the results, not up the stack."""
        working = {}
        for name, fn in fns.items():
            try:
                fn()
                working[name] = fn
            except Exception as error:  # one model's failure (say, a compile error) should not lose the others
                results.setdefault("errors", {}).setdefault(key, {})[name] = f"{type(error).__name__}: {error}"
        return working

    if "train" not in skip:
        results["mfu"] = {}
        spec = results["machine"]["spec_peak_tflops"]
        for batch, src, tgt, vocab in train_shapes:
            key = f"train tokens/s {batch}x{src}x{tgt} V={vocab}"
            data = make_batch(batch, src, tgt, vocab, device)
            fns = {n: train_step_fn(n, prepared(n, vocab, args.compile), data, autocast) for n in names}
            times = interleaved(runnable(key, fns), args.rounds, args.warmup, device)
            del fns
            if not times:
                continue
            results["throughput"][key] = summarize(times, batch * (src + tgt))
            flops = analytic_train_flops(sizes, vocab, batch, src, tgt)
            step = {n: statistics.median(t) for n, t in times.items()}
            results["mfu"][key] = {n: flops / s / (results["machine"]["gemm_peak_gflops"] * 1e9) for n, s in step.items()}
            if spec:
                results.setdefault("mfu_spec", {})[key] = {n: flops / s / (spec * 1e12) for n, s in step.items()}
            results.setdefault("train_flops_per_step", {})[key] = flops
            save()
    if "flops" not in skip and device.type == "cpu":
        batch, src, tgt, vocab = train_shapes[0]
        results["flop_check"] = {
            "analytic": analytic_train_flops(sizes, vocab, batch, src, tgt),
            "flop_counter": counted_train_flops(sizes, vocab, batch, src, tgt),
        }
        save()
    if "generate" not in skip and device.type == "cpu" and args.dtype == "fp32":
        results["machine"]["decode_step_linear_floor_ms"] = {
            f"{how}, batch {batch}": decode_linear_floor_ms(sizes, args.vocab, batch, how == "RowBlockLinear")
            for batch in (1, 4, 16)
            for how in ("nn.Linear", "RowBlockLinear")
        }
        save()
    if "generate" not in skip:
        opt_in = device.type == "cpu" and args.dtype == "fp32" and "vanilla" in names and not args.compile
        for label, batch, beams in gen_cases:
            key = f"generate new tokens/s {label}"
            fns = {}
            for n in names:
                model = prepared(n, args.vocab, compile_forward=False)
                fn = generate_fn(
                    n, model, batch, src_len, new_tokens, beams, args.vocab, device, args.compile, autocast
                )
                if fn is not None:
                    fns[n] = fn
            if opt_in:  # the opt-in CPU paths, against Marian in fp32
                from hf_vanilla_transformer.cpu_inference import optimize_for_cpu_inference
                from hf_vanilla_transformer.quantization import quantize_int8

                model = optimize_for_cpu_inference(prepared("vanilla", args.vocab, False).eval())
                fns["vanilla-cpu"] = generate_fn("vanilla", model, batch, src_len, new_tokens, beams, args.vocab, device)
                for name, package in [("vanilla", None), *BASELINES.items()]:
                    if name not in names:
                        continue
                    if package is not None:
                        quantize = importlib.import_module(f"{package.__name__}.quantization").quantize_int8
                    else:
                        quantize = quantize_int8
                    model = quantize(prepared(name, args.vocab, False).eval(), inplace=True)
                    fns[f"{name}-int8"] = generate_fn(name, model, batch, src_len, new_tokens, beams, args.vocab, device)
            times = interleaved(runnable(key, fns), args.rounds, args.warmup, device)
            if times:
                results["throughput"][key] = summarize(times, batch * new_tokens)
            save()
    if "memory" not in skip:
        batch, src, tgt, vocab = train_shapes[0]
        if device.type == "cpu":
            # in a child process each, which builds the models of this checkout only
            results["memory_mb"] = {n: peak_memory(n, sizes, vocab, batch, src, tgt) for n in names if n not in BASELINES}
        elif device.type == "cuda":
            data = make_batch(batch, src, tgt, vocab, device)
            results["gpu_memory_mb"] = {n: cuda_peak_memory(n, sizes, vocab, data, param_dtype, autocast) for n in names}
        save()

    print_table(results)
    if args.output:
        print(f"\nWrote {args.output}")
    return results


if __name__ == "__main__":
    main()
