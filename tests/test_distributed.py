"""Two CPU processes under torchrun (gloo, accelerate's MULTI_CPU) train like one process with the same global batch;
two "machines" (torchrun --nnodes 2, twice) train the same model; FSDP's fully_shard shards the model over its layers.

The recording trainer below is test-side: a script in tmp_path swaps it into hf_vanilla_transformer/cli/train.py and
calls its main(), so the code under test is the entry point itself.
"""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import hf_vanilla_transformer.cli.train as entry
from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration
from hf_vanilla_transformer.builtin_task import load_builtin_dataset

RECORDING_TRAIN = '''
"""hf-vanilla-train's main() with a trainer that writes down what every process trains on."""
import json
import os
import sys

import torch

import hf_vanilla_transformer.cli.train as entry


class RecordingTrainer(entry.VanillaSeq2SeqTrainer):
    def training_step(self, model, inputs, num_items_in_batch=None):
        rows = [ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
        record = {
            "step": self.state.global_step,
            "rank": self.args.process_index,
            "world_size": self.args.world_size,
            "rows": rows,
            "labels": int(inputs["labels"].ne(-100).sum()),
            "num_items_in_batch": None if num_items_in_batch is None else int(num_items_in_batch),
        }
        with open(f"{os.environ['SEEN_LOG']}.rank{self.args.process_index}", "a") as log:
            log.write(json.dumps(record) + "\\n")
        initial = f"{os.environ['SEEN_LOG']}.initial.pt"
        if self.state.global_step == 0 and self.args.process_index == 0 and not os.path.exists(initial):
            torch.save({k: v.detach().clone() for k, v in self.model.state_dict().items()}, initial)
        return super().training_step(model, inputs, num_items_in_batch)


if __name__ == "__main__":
    torch.set_num_threads(1)
    entry.VanillaSeq2SeqTrainer = RecordingTrainer
    entry.main(sys.argv[1:])
'''

STEPS, KILLED_AT = 16, 13
# 300 built-in pairs make 22 batches of at most 500 tokens an epoch: 11 steps of 2 batches, an even split, so neither
# layout pads or drops a batch at the epoch's end. The two-process run stops at step 13 (its last checkpoint, in
# epoch 1) and a second launch of the same command resumes it to step 16: the resumed processes must find their
# place in epoch 1's batch order. Dropout is off: the two layouts draw random numbers differently. A short warmup
# makes the weights move far in 16 steps, so that equal weights mean something.
RUN = [
    "--config_overrides", "d_model=32,d_ff=64,num_heads=2,encoder_layers=1,decoder_layers=1,dropout=0.0",
    "--tokenizer_vocab_size", "300",
    "--builtin_train_size", "300",
    "--max_test_samples", "2",
    "--max_tokens_per_batch", "500",
    "--warmup_steps", "2",
    "--learning_rate", "0.002",
    "--save_strategy", "steps",
    "--save_steps", str(KILLED_AT),
    "--logging_steps", "1",
    "--report_to", "none",
]  # fmt: skip


def read_records(prefix: Path) -> list[dict]:
    records = []
    for path in sorted(prefix.parent.glob(prefix.name + ".rank*")):
        records += [json.loads(line) for line in path.read_text().splitlines()]
    return records


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same training as 2 processes x 1 batch (stopped at step 13, then resumed) and as 1 process x 2
    accumulated batches."""
    folder = tmp_path_factory.mktemp("distributed")
    script = folder / "recording_train.py"
    script.write_text(RECORDING_TRAIN)
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.update(HF_DATASETS_OFFLINE="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    ddp_dir = folder / "ddp-run"
    logs = []
    for name, steps in (("first", KILLED_AT), ("resumed", STEPS)):
        completed = subprocess.run(
            [torchrun, "--standalone", "--nproc_per_node", "2", str(script), "--output_dir", str(ddp_dir), *RUN,
             "--max_steps", str(steps), "--gradient_accumulation_steps", "1"],
            cwd=folder, env={**env, "SEEN_LOG": str(folder / name)}, capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        assert completed.returncode == 0, completed.stdout[-5000:] + completed.stderr[-5000:]
        logs.append(completed.stdout + completed.stderr)

    # The single process runs here, with the same recording trainer imported from the script.
    spec = importlib.util.spec_from_file_location("recording_train", script)
    recording = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recording)
    patch = pytest.MonkeyPatch()
    patch.setattr(entry, "VanillaSeq2SeqTrainer", recording.RecordingTrainer)
    patch.setenv("SEEN_LOG", str(folder / "single"))
    try:
        single = ["--max_steps", str(STEPS), "--gradient_accumulation_steps", "2"]
        entry.main(["--output_dir", str(folder / "single-run"), *RUN, *single])
    finally:
        patch.undo()
    return {
        "ddp": (ddp_dir, read_records(folder / "first") + read_records(folder / "resumed")),
        "single": (folder / "single-run", read_records(folder / "single")),
        "initial": folder / "single.initial.pt",
        "logs": logs,
    }


def test_two_processes_run_as_multi_cpu_with_token_budget_batches(runs):
    _, records = runs["ddp"]
    assert {r["rank"] for r in records} == {0, 1} and {r["world_size"] for r in records} == {2}
    for rank in (0, 1):
        assert [r["step"] for r in records if r["rank"] == rank] == list(range(STEPS))
    for record in records:
        assert len(record["rows"]) * max(map(len, record["rows"])) <= 500  # the per-device token budget
    assert f"Resuming from {runs['ddp'][0] / f'checkpoint-{KILLED_AT}'}" in runs["logs"][1]
    state = json.loads((runs["ddp"][0] / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS


def test_the_two_processes_see_disjoint_data(runs):
    _, records = runs["ddp"]
    epoch_0 = [r for r in records if r["step"] < 11]
    seen = {rank: [tuple(row) for r in epoch_0 if r["rank"] == rank for row in r["rows"]] for rank in (0, 1)}
    assert seen[0] and seen[1]
    assert len(set(seen[0])) == len(seen[0]) and len(set(seen[1])) == len(seen[1])
    assert not set(seen[0]) & set(seen[1])
    assert len(seen[0]) + len(seen[1]) == 300  # together, every pair of the epoch once


def test_together_they_train_on_what_one_process_trains_on_step_by_step(runs):
    # Rank 0 takes the first of the single process's two accumulated batches, rank 1 the second; after the resume
    # too, in the middle of epoch 1.
    _, records = runs["ddp"]
    _, single = runs["single"]
    for step in range(STEPS):
        one = [r["rows"] for r in single if r["step"] == step]
        two = [r["rows"] for r in sorted((r for r in records if r["step"] == step), key=lambda r: r["rank"])]
        assert len(one) == 2 and one == two, step


@pytest.mark.parametrize("recipe", ["builtin", "paper", "paper_big"])
def test_every_recipe_gathers_token_counts_across_processes(recipe):
    # transformers 5 defaults average_tokens_across_devices to True; no recipe may turn it off.
    *_, training_args = entry.parse_args(["--recipe", recipe, "--output_dir", "unused"])
    assert training_args.average_tokens_across_devices is True


def test_losses_are_normalised_by_the_global_token_count(runs):
    _, records = runs["ddp"]
    _, single = runs["single"]
    for step in range(STEPS):
        both = [r for r in records if r["step"] == step]
        total = sum(r["labels"] for r in both)
        # average_tokens_across_devices (True by default) gathers the count over the processes ...
        assert [r["num_items_in_batch"] for r in both] == [total, total]
        # ... and it is the count of the single process's two accumulated batches.
        assert [r["num_items_in_batch"] for r in single if r["step"] == step] == [total, total]


def test_two_processes_end_with_the_weights_of_one_process_with_gradient_accumulation(runs):
    ddp = load_file(runs["ddp"][0] / "model.safetensors")
    single = load_file(runs["single"][0] / "model.safetensors")
    assert ddp.keys() == single.keys()
    # Why (nearly) the same bits: each rank's loss is its token sum / the global count x 2 (num_processes), and DDP
    # averages the two gradients, (2a + 2b) / 2; the single process accumulates a + b. Scaling by 2 is exact in
    # floating point and a sum of two terms does not depend on their order, so both give a + b bit for bit (measured:
    # difference 0). The tolerance, 1e-6 (a few float32 ulps of weights of size ~1, 1e-4 of what training moved
    # them), only leaves room for a reduction in gloo or DDP that splits the sum differently. A wrong normalisation
    # (each rank dividing by its own token count, a batch seen by both ranks) turns the update by about the learning
    # rate, 1e-3. Adam would hide a loss off by a constant factor, so the gradient norms and losses must agree too.
    initial = torch.load(runs["initial"])
    moved = max((single[name] - initial[name]).abs().max().item() for name in single)
    assert moved > 1e-2
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=0, atol=1e-6, msg=name)


def test_two_processes_log_the_losses_and_gradient_norms_of_one_process(runs):
    def logged(folder):
        history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
        return [value for entry in history if "loss" in entry for value in (entry["loss"], entry["grad_norm"])]

    ddp, single = logged(runs["ddp"][0]), logged(runs["single"][0])
    assert len(ddp) == len(single) == 2 * STEPS
    assert ddp == pytest.approx(single, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Two machines: torchrun --nnodes 2 twice on the loopback address, one process each
# ---------------------------------------------------------------------------------------------

NODE_TRAIN = '''
"""hf-vanilla-train's main(), writing down per process: BPE trainings, the tokenizer's datasets fingerprint, and the
final weights."""
import json
import os
import sys

import torch
from datasets.fingerprint import Hasher

import hf_vanilla_transformer.cli.train as entry

LOG = os.environ["NODE_LOG"]
RANK = os.environ["RANK"]
train_bpe_tokenizer = entry.train_bpe_tokenizer


def recording_bpe(*args, **kwargs):
    with open(f"{LOG}.bpe", "a") as log:
        log.write(RANK + "\\n")
    return train_bpe_tokenizer(*args, **kwargs)


class RecordingTrainer(entry.VanillaSeq2SeqTrainer):
    def train(self, *args, **kwargs):
        initial = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        result = super().train(*args, **kwargs)
        final = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        torch.save({"initial": initial, "final": final}, f"{LOG}.rank{RANK}.pt")
        record = {"tokenizer": Hasher.hash(self.processing_class), "world_size": self.args.world_size}
        with open(f"{LOG}.rank{RANK}.json", "w") as out:
            json.dump(record, out)
        return result


if __name__ == "__main__":
    torch.set_num_threads(1)
    entry.train_bpe_tokenizer = recording_bpe
    entry.VanillaSeq2SeqTrainer = RecordingTrainer
    entry.main(sys.argv[1:])
'''


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two-nodes")
    script = folder / "node_train.py"
    script.write_text(NODE_TRAIN)
    pairs = load_builtin_dataset(seed=3, train_size=200, validation_size=0, test_size=0)["train"]["translation"]
    train_file = folder / "train.jsonl"
    train_file.write_text("".join(json.dumps({"translation": pair}) + "\n" for pair in pairs))
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.update(HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(folder / "datasets-cache"), NODE_LOG=str(folder / "log"))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    port = free_port()
    arguments = [
        "--train_file", str(train_file), "--source_lang", "en", "--target_lang", "toy",
        "--output_dir", str(folder / "run"), "--config_overrides", RUN[1], "--tokenizer_vocab_size", "300",
        "--max_tokens_per_batch", "500", "--max_steps", "3", "--warmup_steps", "1", "--learning_rate", "0.002",
        "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none",
    ]  # fmt: skip
    nodes = [
        subprocess.Popen(
            [torchrun, "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank),
             "--master_addr", "127.0.0.1", "--master_port", str(port), str(script), *arguments],
            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = []
    for node in nodes:
        try:
            outputs.append(node.communicate(timeout=400)[0])
        except subprocess.TimeoutExpired:
            for each in nodes:
                each.kill()
            raise
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-5000:]
    return folder


def test_two_nodes_train_the_same_model(two_nodes):
    states = [torch.load(two_nodes / f"log.rank{rank}.pt") for rank in (0, 1)]
    final = [state["final"] for state in states]
    assert final[0].keys() == final[1].keys()
    for name in final[0]:
        assert torch.equal(final[0][name], final[1][name]), name
    moved = max((final[0][name] - states[0]["initial"][name]).abs().max().item() for name in final[0])
    assert moved > 1e-3  # three steps of training, not two untouched copies
    assert [json.loads((two_nodes / f"log.rank{rank}.json").read_text())["world_size"] for rank in (0, 1)] == [2, 2]
    saved = load_file(two_nodes / "run" / "model.safetensors")  # by the main process
    assert saved and all(torch.equal(saved[name], final[1][name]) for name in saved)


def test_the_tokenizer_is_trained_once_and_both_nodes_find_the_same_cache(two_nodes):
    assert (two_nodes / "log.bpe").read_text().split() == ["0"]  # the main process trains, the other receives
    fingerprints = {json.loads((two_nodes / f"log.rank{rank}.json").read_text())["tokenizer"] for rank in (0, 1)}
    assert len(fingerprints) == 1  # the datasets cache of the tokenized data is keyed by it


# ---------------------------------------------------------------------------------------------
# FSDP: torch's fully_shard over the layers, on two CPU processes (gloo)
# ---------------------------------------------------------------------------------------------

FSDP_TRAIN = '''
"""Shard the model with fully_shard over its _no_split_modules, as accelerate's FSDP2 (TRANSFORMER_BASED_WRAP) does,
and train it beside an unsharded copy; before that, ask the Trainer for FSDP on CPUs, where accelerate cannot."""
import copy
import json
import logging
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, fully_shard
from transformers import Seq2SeqTrainingArguments

from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration
from hf_vanilla_transformer.training import VanillaSeq2SeqTrainer

torch.set_num_threads(1)
warnings = []
handler = logging.Handler()
handler.emit = lambda record: warnings.append(record.getMessage())
logging.getLogger("hf_vanilla_transformer.training").addHandler(handler)
os.environ["ACCELERATE_USE_FSDP"] = "true"  # what accelerate launch --use_fsdp sets
config = VanillaTransformerConfig(
    vocab_size=40, d_model=16, d_ff=32, num_heads=2, encoder_layers=2, decoder_layers=2, dropout=0.0,
    max_position_embeddings=64,
)
args = Seq2SeqTrainingArguments(output_dir=sys.argv[1] + "/trainer", use_cpu=True, report_to="none")
trainer = VanillaSeq2SeqTrainer(model=VanillaTransformerForConditionalGeneration(config), args=args)
rank = dist.get_rank()

torch.manual_seed(0)
model = VanillaTransformerForConditionalGeneration(config)
reference = copy.deepcopy(model)
initial = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
total = sum(p.numel() for p in model.parameters())
layers = [module for module in model.modules() if type(module).__name__ in model._no_split_modules]
layer_classes = sorted({type(layer).__name__ for layer in layers})  # fully_shard gives each a class of its own
for layer in layers:
    fully_shard(layer)
fully_shard(model)
generator = torch.Generator().manual_seed(1)
inputs = torch.randint(4, 40, (4, 9), generator=generator)
labels = torch.randint(4, 40, (4, 7), generator=generator)
# SGD: Adam would blow up the rounding noise in the gradients that are zero in exact arithmetic (the key biases).
optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
for step in range(3):
    mine = slice(2 * rank, 2 * rank + 2)  # each process half the batch: FSDP averages the two gradients
    model(input_ids=inputs[mine], labels=labels[mine]).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    reference(input_ids=inputs, labels=labels).loss.backward()
    reference_optimizer.step()
    reference_optimizer.zero_grad()
full = {name: parameter.full_tensor() for name, parameter in model.named_parameters()}
expected = dict(reference.named_parameters())
record = {
    "distributed_type": trainer.accelerator.distributed_type.value,
    "warnings": warnings,
    "layer_classes": layer_classes,
    "layers": len(layers),
    "sharded_layers": sum(isinstance(layer, FSDPModule) for layer in layers),
    "local_share": sum(p.to_local().numel() for p in model.parameters()) / total,
    "max_difference": max((full[name] - expected[name]).abs().max().item() for name in full),
    "moved": max((expected[name] - initial[name]).abs().max().item() for name in full),
}
with open(f"{sys.argv[1]}/fsdp.rank{rank}.json", "w") as out:
    json.dump(record, out)
'''


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fsdp")
    script = folder / "fsdp_train.py"
    script.write_text(FSDP_TRAIN)
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    completed = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(folder)],
        cwd=folder, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-5000:] + completed.stderr[-5000:]
    return [json.loads((folder / f"fsdp.rank{rank}.json").read_text()) for rank in (0, 1)]


def test_fully_shard_over_the_layers_trains_like_the_unsharded_model(fsdp_run):
    for record in fsdp_run:
        # _no_split_modules names the encoder and decoder layers, and every one of them is a sharding unit.
        assert record["layer_classes"] == ["VanillaTransformerDecoderLayer", "VanillaTransformerEncoderLayer"]
        assert record["layers"] == record["sharded_layers"] == 4
        assert 0.45 < record["local_share"] < 0.55  # each process holds half of the weights
        assert record["moved"] > 1e-2 and record["max_difference"] < 1e-5  # three steps: the whole-batch weights


def test_fsdp_asked_of_the_trainer_on_cpus_says_in_one_line_that_nothing_is_sharded(fsdp_run):
    for record in fsdp_run:
        assert record["distributed_type"] == "MULTI_CPU"
        assert record["warnings"] == [
            "FSDP was asked for, but accelerate set up MULTI_CPU for 2 process(es): nothing is sharded, every process "
            "holds all the weights (accelerate shards with FSDP on GPUs only)."
        ]


@pytest.mark.parametrize("name", ["ddp_two_machines", "fsdp", "deepspeed_zero2"])
def test_the_documented_accelerate_configs_load_and_have_their_command(name):
    from accelerate.commands.config.config_args import ClusterConfig

    docs = Path(__file__).resolve().parent.parent / "docs"
    config = ClusterConfig.from_yaml_file(docs / "accelerate" / f"{name}.yaml")  # unknown keys would raise
    assert f"accelerate launch --config_file docs/accelerate/{name}.yaml" in (docs / "distributed.md").read_text()
    if name == "fsdp":
        wrapped = config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")
        assert sorted(wrapped) == sorted(VanillaTransformerForConditionalGeneration._no_split_modules)
        assert config.fsdp_config["fsdp_version"] == 2
