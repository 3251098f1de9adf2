"""One tiny trained run shared by the tests of the commands that read a model folder."""

import pytest

from hf_vanilla_transformer.cli.train import main as train_main
from hf_vanilla_transformer.translation import load_translation_model


# The run of `run_dir`, without its --output_dir: the same arguments into another folder make the same model.
RUN_ARGS = [
    "--config_overrides", "d_model=32,d_ff=64,num_heads=2,encoder_layers=1,decoder_layers=1,dropout=0.0",
    "--tokenizer_vocab_size", "300",
    "--builtin_train_size", "300",
    "--max_steps", "20",
    "--warmup_steps", "5",
    "--learning_rate", "0.003",
    "--save_strategy", "steps",
    "--save_steps", "10",
    "--max_test_samples", "2",
    "--report_to", "none",
]  # fmt: skip


@pytest.fixture(scope="session")
def run_args():
    return list(RUN_ARGS)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A tiny model trained once for the session: 20 steps, checkpoints at 10 and 20, final model in the folder."""
    folder = tmp_path_factory.mktemp("cli") / "run"
    train_main(["--output_dir", str(folder), *RUN_ARGS])
    return folder


@pytest.fixture(scope="session")
def loaded(run_dir):
    return load_translation_model(str(run_dir), device="cpu")
