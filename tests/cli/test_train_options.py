"""hf-vanilla-train's command line as train_options.py reads it, without torch or transformers, held to the parser
that makes the arguments (train.py's HfArgumentParser): it knows every option, and refuses only what that one does."""

import dataclasses

import pytest
from transformers import Seq2SeqTrainingArguments

from hf_vanilla_transformer.cli.train import TrainArgumentParser, parse_args
from hf_vanilla_transformer.cli.train_options import CommandLine, read_command_line, trainer_options


def test_the_trainer_options_read_from_transformers_source_are_its_dataclass_fields():
    options, _ = trainer_options()
    fields = [f for f in dataclasses.fields(Seq2SeqTrainingArguments) if f.init]
    assert [option.name for option in options] == [f.name for f in fields]


def test_every_option_is_known_and_none_is_stricter_than_hfargumentparser():
    full, light = TrainArgumentParser(), CommandLine()
    mine = {flag: action for action in light._actions for flag in action.option_strings}
    for action in full._actions:
        for flag in action.option_strings:
            assert flag in mine, flag
            assert mine[flag].dest == action.dest or flag in ("-h", "--help"), flag
    checked = {action.dest: action for action in full._actions}
    for action in light._actions:
        if action.dest not in checked:
            assert action.option_strings[0] in ("-h", "--help_trainer"), action.option_strings
            continue
        theirs = checked[action.dest]
        if action.choices is not None:  # the same values, or none checked here
            assert list(action.choices) == [str(choice) for choice in theirs.choices], action.dest
        if action.type in (int, float):
            assert theirs.type is action.type, action.dest
        if action.nargs == "+":
            assert theirs.nargs == "+", action.dest


@pytest.mark.parametrize(
    "argv",
    [
        ["--learning_rate", "3e-4", "--max-steps", "5", "--fp16", "false", "--no_dataloader_pin_memory"],
        ["--eval_strategy", "steps", "--report_to", "none", "--lr_scheduler_type", "inverse_sqrt", "--streaming"],
        ["--config_overrides", "d_model=64", "--max_tokens_per_batch", "100", "--optim", "adamw_torch"],
    ],
)
def test_what_hfargumentparser_takes_is_taken(argv, tmp_path):
    read_command_line(argv)
    parse_args([*argv, "--output_dir", str(tmp_path)])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--learning_rate", "fast"], "--learning_rate"),
        (["--lerning_rate", "1e-3"], "unrecognized arguments: --lerning_rate"),  # a typo
        (["--eval_strategy", "sometimes"], "invalid choice: 'sometimes'"),
        (["--max_tokens_per_batch", "many"], "--max_tokens_per_batch"),
    ],
)
def test_what_hfargumentparser_refuses_is_refused_first(argv, message, capsys):
    with pytest.raises(SystemExit) as light:
        read_command_line(argv)
    assert light.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(argv)
