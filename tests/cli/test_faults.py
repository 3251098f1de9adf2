"""Faults a user's run meets, and what survives them (issue 23): running again into a used output folder, Ctrl-C, a
loss that diverges, SIGKILL at every write point, no network. Each test checks that nothing is lost or half-written.

The kills come from a hook in a subprocess: a small script patches the function that writes, so that the process
kills itself (SIGKILL, which no code can catch or clean up after) at a chosen point, then runs the command.
"""

import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, TrainerCallback

import hf_vanilla_transformer.cli.train as train_cli
from hf_vanilla_transformer.cli import average_checkpoints, convert, export
from hf_vanilla_transformer.training import VanillaSeq2SeqTrainer, last_complete_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_convert_marian import opus_like_marian  # noqa: E402

CHECKPOINT_FILES = ("trainer_state.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth")


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


def assert_same_weights(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        # One thread on one CPU: the same arithmetic in the same order, so the same bits.
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)


def checkpoints(folder: Path) -> list[str]:
    return sorted((p.name for p in folder.glob("checkpoint-*")), key=lambda name: int(name.split("-")[1]))


def assert_whole_checkpoints(folder: Path) -> None:
    for name in checkpoints(folder):
        missing = [f for f in CHECKPOINT_FILES if not (folder / name / f).exists()]
        assert not missing, f"{name} lacks {missing}"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    return folder


def error_line(capsys) -> str:
    """Standard error's one line of a console script that ended with a user error."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), lines
    assert not any("Traceback" in line for line in lines), lines
    return lines[-1]


# ---------------------------------------------------------------------------------------------
# Running again into an output folder (issue 23 items 3 and 4)
# ---------------------------------------------------------------------------------------------


def test_a_finished_run_is_left_as_it_is_without_overwrite_output_dir(run_dir, run_args, tmp_path, capsys):
    folder = copy_run(run_dir, tmp_path)
    before = snapshot(folder)
    with pytest.raises(SystemExit) as stopped:
        train_cli.main(["--output_dir", str(folder), *run_args])
    assert stopped.value.code == 2
    line = error_line(capsys)
    assert f"{folder} holds a finished run (all_results.json, 20 steps)" in line and "--overwrite_output_dir" in line
    assert "a larger --max_steps" in line  # how to train it further
    assert snapshot(folder) == before  # the model, its card and its figures, byte for byte


def test_a_finished_run_asked_for_more_steps_trains_further_from_its_last_checkpoint(
    run_dir, run_args, tmp_path, caplog
):
    folder = copy_run(run_dir, tmp_path)
    caplog.set_level(logging.INFO, logger="hf_vanilla_transformer")
    results = train_cli.run(["--output_dir", str(folder), *run_args, "--max_steps", "24"])
    assert f"Resuming from {folder / 'checkpoint-20'} (step 20)" in caplog.text
    assert checkpoints(folder) == ["checkpoint-10", "checkpoint-20"]  # 24 is no multiple of --save_steps 10
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["global_step"] == 24 and results["train_loss"] > 0  # the figures of the 4 steps it trained
    assert json.loads((folder / "all_results.json").read_text()) == results


def test_overwrite_output_dir_trains_a_finished_run_again_from_scratch(run_dir, run_args, tmp_path, caplog):
    folder = copy_run(run_dir, tmp_path)
    shutil.copytree(folder / "checkpoint-20", folder / "checkpoint-40")  # as a longer earlier run would leave
    (folder / "notes.txt").write_text("mine")
    caplog.set_level(logging.INFO, logger="hf_vanilla_transformer")
    results = train_cli.run(["--output_dir", str(folder), *run_args, "--overwrite_output_dir"])
    assert "Resuming" not in caplog.text and "Training a shared BPE tokenizer" in caplog.text
    assert checkpoints(folder) == ["checkpoint-10", "checkpoint-20"]  # the earlier run's are gone, not resumed
    assert (folder / "notes.txt").read_text() == "mine"  # what is not a run's is kept
    assert_same_weights(weights(folder), weights(run_dir))
    reference = json.loads((run_dir / "all_results.json").read_text())
    assert json.loads((folder / "all_results.json").read_text()) == results
    assert results["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-6) and results["train_loss"] > 0


def test_an_unfinished_run_of_another_model_is_refused_before_any_work(
    run_dir, run_args, tmp_path, capsys, monkeypatch
):
    folder = copy_run(run_dir, tmp_path)
    (folder / "all_results.json").unlink()  # unfinished: as if killed before the end
    before = snapshot(folder)

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the folder was checked")

    monkeypatch.setattr(train_cli, "load_data", no_data)
    other = "d_model=64,d_ff=64,num_heads=2,encoder_layers=1,decoder_layers=1,dropout=0.0"
    with pytest.raises(SystemExit) as stopped:
        train_cli.main(["--output_dir", str(folder), *run_args, "--config_overrides", other])
    assert stopped.value.code == 2
    line = error_line(capsys)
    assert f"{folder} holds a run of another model (checkpoint-20: d_model 32 there, 64 asked" in line
    assert "--overwrite_output_dir" in line
    assert snapshot(folder) == before


def test_a_folder_holding_a_model_but_no_run_is_refused(run_dir, run_args, tmp_path, capsys):
    folder = copy_run(run_dir, tmp_path)
    for name in ["all_results.json", *checkpoints(folder)]:  # a model folder, as hf-vanilla-average writes one
        shutil.rmtree(folder / name) if (folder / name).is_dir() else (folder / name).unlink()
    before = snapshot(folder)
    with pytest.raises(SystemExit):
        train_cli.main(["--output_dir", str(folder), *run_args])
    assert f"{folder} holds a model (config.json) and no unfinished run to resume" in error_line(capsys)
    assert snapshot(folder) == before


def test_an_unfinished_run_resumes_with_its_own_tokenizer_and_no_missing_key_warning(
    run_dir, run_args, tmp_path, caplog, capfd
):
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copytree(run_dir / "checkpoint-10", folder / "checkpoint-10")  # killed after step 10
    caplog.set_level(logging.INFO, logger="hf_vanilla_transformer")
    train_cli.main(["--output_dir", str(folder), *run_args])
    assert f"Resuming from {folder / 'checkpoint-10'}" in caplog.text
    # The checkpoint stores the tied embedding once; the Trainer used to call the other two names missing.
    assert "missing keys" not in capfd.readouterr().err + caplog.text
    assert "Training a shared BPE tokenizer" not in caplog.text
    assert_same_weights(weights(folder), weights(run_dir))
    assert (folder / "tokenizer.json").read_bytes() == (run_dir / "tokenizer.json").read_bytes()
    model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


# ---------------------------------------------------------------------------------------------
# SIGKILL at each write point, from a hook in a subprocess; Ctrl-C
# ---------------------------------------------------------------------------------------------

RUNNER = """
import os, signal, sys
import torch

torch.set_num_threads(1)  # as in the test process (conftest): the same arithmetic, the same bits
TARGET = os.path.abspath(os.environ.get("FAULT_TARGET", "."))


def kill():
    os.kill(os.getpid(), signal.SIGKILL)  # no handler, no clean-up: as a power cut or the OOM killer


{patch}

from {module} import main

main(sys.argv[1:])
"""

KILL_WRITING_CHECKPOINT_20 = """
from transformers import TrainerState

save_to_json = TrainerState.save_to_json


def killing_save_to_json(self, path):
    if "checkpoint-20" in path:  # the checkpoint's last file: its weights, optimizer and RNG state are written
        kill()
    save_to_json(self, path)


TrainerState.save_to_json = killing_save_to_json
"""

# A rename into the output folder, at its top: kill just before or just after it.
KILL_AT_RENAME = """
replace = os.replace


def killing_replace(source, destination, *args, **kwargs):
    hit = os.path.abspath(destination) == os.path.join(TARGET, "{name}")
    if hit and "{when}" == "before":
        kill()
    replace(source, destination, *args, **kwargs)
    if hit:
        kill()


os.replace = killing_replace
"""

# A function that writes into a staging folder: kill once it has written, before the folder is renamed into place.
KILL_AFTER_CALL = """
import importlib

owner = importlib.import_module("{module}").{owner}
original = owner.{method}


def killing(*args, **kwargs):
    original(*args, **kwargs)
    kill()


owner.{method} = killing
"""

def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.update(HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1", **extra)
    return env


def run_with_fault(tmp_path: Path, patch: str, module: str, argv: list[str], target: Path | None = None):
    script = tmp_path / f"fault_{len(list(tmp_path.glob('fault_*.py')))}.py"
    script.write_text(RUNNER.format(patch=textwrap.dedent(patch), module=module))
    env = subprocess_env(FAULT_TARGET=str(target or tmp_path))
    return subprocess.run(
        [sys.executable, str(script), *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


def assert_killed(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == -signal.SIGKILL, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def test_a_run_killed_at_each_write_point_resumes_to_the_same_model(run_dir, run_args, tmp_path, capsys):
    folder = tmp_path / "run"
    argv = ["--output_dir", str(folder), *run_args]
    train = "hf_vanilla_transformer.cli.train"

    # Killed while writing checkpoint-20: checkpoint-10 is whole, checkpoint-20 is not there at all.
    assert_killed(run_with_fault(tmp_path, KILL_WRITING_CHECKPOINT_20, train, argv, folder))
    assert checkpoints(folder) == ["checkpoint-10"]
    assert_whole_checkpoints(folder)
    assert not (folder / "model.safetensors").exists() and not (folder / "all_results.json").exists()

    # The same command resumes; killed halfway through putting the final model in place.
    done = run_with_fault(tmp_path, KILL_AT_RENAME.format(name="model.safetensors", when="after"), train, argv, folder)
    assert_killed(done)
    assert f"Resuming from {folder / 'checkpoint-10'}" in done.stdout
    assert checkpoints(folder) == ["checkpoint-10", "checkpoint-20"]
    assert_whole_checkpoints(folder)
    assert_same_weights(weights(folder / "checkpoint-20"), weights(run_dir / "checkpoint-20"))
    assert not (folder / "all_results.json").exists()  # not a finished run: the next one resumes it

    # Again; killed while writing the model card: the model is whole, the card and the results are not there.
    done = run_with_fault(tmp_path, KILL_AT_RENAME.format(name="README.md", when="before"), train, argv, folder)
    assert_killed(done)
    assert f"Resuming from {folder / 'checkpoint-20'}" in done.stdout
    assert_same_weights(weights(folder), weights(run_dir))
    assert not (folder / "README.md").exists() and not (folder / "all_results.json").exists()

    # Again, to the end: the model and test scores of the run that was never killed.
    results = train_cli.run(argv)
    assert_same_weights(weights(folder), weights(run_dir))
    reference = json.loads((run_dir / "all_results.json").read_text())
    assert {k: v for k, v in results.items() if k.startswith("test_")} == {
        k: v for k, v in reference.items() if k.startswith("test_")
    }
    # This last call trained nothing (checkpoint-20 was the last step): it makes up no training figures.
    assert not any(k.startswith("train_") for k in results)
    assert "training loss" not in (folder / "README.md").read_text()
    assert json.loads((folder / "all_results.json").read_text()) == results
    assert not (folder / ".staging").exists()

    # And once more: the run is finished, and nothing of it is touched.
    before = snapshot(folder)
    with pytest.raises(SystemExit):
        train_cli.main(argv)
    assert "holds a finished run" in error_line(capsys)
    assert snapshot(folder) == before


class CtrlCAtStep13(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 13:
            raise KeyboardInterrupt  # what Python's SIGINT handler raises when Ctrl-C is pressed


class TrainerStoppedByCtrlC(VanillaSeq2SeqTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(CtrlCAtStep13())


def test_ctrl_c_says_where_to_resume_in_one_line_and_resume_ends_as_an_uninterrupted_run(
    run_dir, run_args, tmp_path, capsys, caplog, monkeypatch
):
    folder = tmp_path / "run"
    argv = ["--output_dir", str(folder), *run_args]
    monkeypatch.setattr(train_cli, "VanillaSeq2SeqTrainer", TrainerStoppedByCtrlC)
    try:
        with pytest.raises(SystemExit) as stopped:
            train_cli.main(argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C reached the user as a KeyboardInterrupt traceback")
    assert stopped.value.code == 130  # as for any program that SIGINT ends
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"interrupted: Training stopped at step 13; the last checkpoint is {folder / 'checkpoint-10'}. "
        f"Resume from it with: hf-vanilla-train {shlex.join(argv)}"
    )
    assert checkpoints(folder) == ["checkpoint-10"]
    assert_whole_checkpoints(folder)

    monkeypatch.undo()
    caplog.set_level(logging.INFO, logger="hf_vanilla_transformer")
    train_cli.main(argv)  # the command it gave
    assert f"Resuming from {folder / 'checkpoint-10'}" in caplog.text
    assert_same_weights(weights(folder), weights(run_dir))


@pytest.mark.parametrize("command", ["export", "average", "convert"])
def test_a_command_killed_while_writing_leaves_no_output_and_runs_again(command, run_dir, tmp_path):
    output = tmp_path / "out"
    if command == "export":
        module, run = "hf_vanilla_transformer.cli.export", export.run
        argv = [str(run_dir), str(output), "--to", "ctranslate2"]
        spec = dict(module="ctranslate2.specs.model_spec", owner="SequenceToSequenceModelSpec", method="save")
        patch = KILL_AFTER_CALL.format(**spec)
    else:
        patch = KILL_AFTER_CALL.format(module="transformers", owner="PreTrainedModel", method="save_pretrained")
        if command == "average":
            module, run = "hf_vanilla_transformer.cli.average_checkpoints", average_checkpoints.run
            argv = [str(run_dir), "--last", "2", "--output_dir", str(output)]
        else:
            opus_like_marian().save_pretrained(tmp_path / "marian")
            module, run = "hf_vanilla_transformer.cli.convert", convert.run
            argv = ["--from", "marian", str(tmp_path / "marian"), str(output)]
    assert_killed(run_with_fault(tmp_path, patch, module, argv))
    assert not output.exists()  # the weights were written, but only in a staging folder

    # What the killed run left (a hidden staging folder) does not stand in the way of the same command.
    run(argv)
    if command == "export":
        import ctranslate2
        from transformers import AutoTokenizer

        tokens = AutoTokenizer.from_pretrained(output).tokenize("the old farmer")
        # One thread: CTranslate2 sets the OpenMP thread count it shares with torch, which later tests keep at 1.
        translator = ctranslate2.Translator(str(output), intra_threads=1)
        assert translator.translate_batch([tokens], max_decoding_length=3)
    else:
        assert AutoModelForSeq2SeqLM.from_pretrained(output).num_parameters() > 0


# ---------------------------------------------------------------------------------------------
# Divergence: a loss or weights that are no longer numbers
# ---------------------------------------------------------------------------------------------


class NanLossAtStep15(VanillaSeq2SeqTrainer):
    def compute_loss(self, model, inputs, *args, **kwargs):
        loss = super().compute_loss(model, inputs, *args, **kwargs)
        if model.training and self.state.global_step == 14:  # the loss of step 15
            loss = loss * float("nan")
        return loss


class NanWeightAtStep10(TrainerCallback):
    name = "model.encoder.layers.0.self_attn.q_proj.weight"

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 10:  # just before checkpoint-10 is saved
            with torch.no_grad():
                model.get_parameter(self.name)[0, 0] = float("inf")


class TrainerWithNanWeights(VanillaSeq2SeqTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(NanWeightAtStep10())


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(
    run_dir, run_args, tmp_path, capsys, monkeypatch
):
    folder = tmp_path / "run"
    argv = ["--output_dir", str(folder), *run_args]
    monkeypatch.setattr(train_cli, "VanillaSeq2SeqTrainer", NanLossAtStep15)
    with pytest.raises(SystemExit) as stopped:
        train_cli.main(argv)
    assert stopped.value.code == 2
    line = error_line(capsys)
    assert line.startswith("error: Training diverged at step 15: the loss became nan.")
    assert f"the last good checkpoint is {folder / 'checkpoint-10'}" in line
    assert checkpoints(folder) == ["checkpoint-10"]  # no checkpoint, no final model after the NaN
    assert not (folder / "model.safetensors").exists() and not (folder / "all_results.json").exists()
    assert_same_weights(weights(folder / "checkpoint-10"), weights(run_dir / "checkpoint-10"))

    monkeypatch.undo()  # whatever made the loss NaN is gone: the same command resumes from the good checkpoint
    train_cli.main(argv)
    assert_same_weights(weights(folder), weights(run_dir))


def test_weights_that_are_not_numbers_are_never_saved(run_args, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "run"
    monkeypatch.setattr(train_cli, "VanillaSeq2SeqTrainer", TrainerWithNanWeights)
    with pytest.raises(SystemExit):
        train_cli.main(["--output_dir", str(folder), *run_args])
    line = error_line(capsys)
    assert f"Training diverged by step 10: {NanWeightAtStep10.name} is no longer finite" in line
    assert "no checkpoint had been saved before" in line
    assert last_complete_checkpoint(str(folder)) is None and not (folder / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------
# No network: transformers >= 5.25 turns hub kernels on in from_pretrained; nothing may reach for the network
# ---------------------------------------------------------------------------------------------


OFFLINE_SCRIPT = """
import json, sys, time
import torch

torch.set_num_threads(1)
run_dir, out = sys.argv[1], sys.argv[2]
times = {}
start = time.perf_counter()
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
import hf_vanilla_transformer
from hf_vanilla_transformer.cli import train, translate

times["import"] = time.perf_counter() - start
start = time.perf_counter()
model = AutoModelForSeq2SeqLM.from_pretrained(run_dir)
tokenizer = AutoTokenizer.from_pretrained(run_dir)
times["load"] = time.perf_counter() - start
start = time.perf_counter()
translate.main([run_dir, "--num_beams", "1", "the old farmer sees a red boat"])
times["translate"] = time.perf_counter() - start
start = time.perf_counter()
train.main(["--model_name_or_path", run_dir, "--output_dir", out, "--builtin_train_size", "100", "--max_steps", "2",
            "--max_test_samples", "2", "--num_beams", "1", "--report_to", "none"])
times["train"] = time.perf_counter() - start
print("TIMES", json.dumps(times))
"""


def test_loading_translating_and_training_need_no_network(run_dir, tmp_path, tripwire):
    script = tmp_path / "offline.py"
    script.write_text(OFFLINE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_OFFLINE", "_PROXY", "_proxy"))}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HOME=str(tmp_path / "hf-home"))
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = tripwire.url  # every request the libraries make goes to the tripwire
    done = subprocess.run(
        [sys.executable, str(script), str(run_dir), str(tmp_path / "tuned")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # No request means no wait: the seconds each step took are printed for the reader, not asserted (a loaded
    # machine makes them anything).
    assert tripwire.requests == [], f"asked the network: {tripwire.requests}"
    print("seconds:", json.loads(done.stdout.split("TIMES ", 1)[1]))
