r"""Train a vanilla Transformer from scratch (or fine-tune one) with `Seq2SeqTrainer`.

    hf-vanilla-train                                   # the built-in task, a few minutes on a laptop CPU
    hf-vanilla-train --output_dir runs/x --recipe paper --dataset_name wmt14 --dataset_config_name de-en \
        --source_lang en --target_lang de              # the paper's recipe (§5)
    hf-vanilla-train my_run.yaml [--max_steps 10]      # arguments from a JSON or YAML file (options after it win)

Arguments are this project's (model, data, recipe) plus transformers' `Seq2SeqTrainingArguments`, all of which
work; --help shows the most used of those, --help_trainer every one. A recipe (`--recipe builtin|paper|paper_big`
or a JSON/YAML file) sets defaults; arguments on the command line win. A mistake in the arguments or the data
ends in one line, "error: ...", exit status 2; --log_level debug shows the traceback too.
"""

# What hf-vanilla-train takes, read without torch or transformers: --help and an argument error answer in a
# fraction of a second, where importing the training stack takes seconds (the console script, train_arguments.py,
# reads the command line here first). `train.py` then parses the same command line into the dataclasses with
# transformers' HfArgumentParser. The Trainer's options are read from the source of
# `Seq2SeqTrainingArguments` (ast, no import); tests/cli/test_train_options.py holds them to HfArgumentParser's.

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from hf_vanilla_transformer.cli._errors import OneLineErrors

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"  # shipped as package data
DEFAULT_OUTPUT_DIR = "outputs/vanilla-builtin"


@dataclass
class ModelArguments:
    _argument_group_name = "model"

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Fine-tune this model folder or Hub id instead of training from scratch."}
    )
    preset: str = field(
        default="base",
        metadata={"help": "Row of the paper's Table 3 to start from: base, big, A1..A4, B1, B2, C1..C7, D1..D4, E."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Config values on top of the preset, e.g. 'd_model=256,d_ff=1024,encoder_layers=3'."},
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer folder or Hub id; default: the model's, or train a new BPE one."}
    )
    tokenizer_vocab_size: int = field(
        default=8000, metadata={"help": "Vocabulary size of a newly trained shared BPE tokenizer (paper: ~37000)."}
    )
    tokenizer_min_frequency: int = field(
        default=2,
        metadata={
            "help": "A new BPE tokenizer merges only pairs seen at least this often, so a small corpus gets a smaller "
            "vocabulary than --tokenizer_vocab_size (the paper recipe: 20)."
        },
    )
    tokenizer_train_samples: int | None = field(
        default=None,
        metadata={
            "help": "Train a new tokenizer on a random sample of this many pairs (default 1000000), or on the "
            "first pairs of a stream (default 100000)."
        },
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa, eager, flash_attention_2, flex_attention."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are cached."})


@dataclass
class DataArguments:
    _argument_group_name = "data (default: the built-in task)"

    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset, e.g. wmt14 (needs internet)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration, e.g. de-en."})
    train_file: str | None = field(
        default=None, metadata={"help": "Local .jsonl/.csv/.tsv file, or 'train.en,train.de' aligned text files."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "Like train_file, for evaluation during training."})
    test_file: str | None = field(default=None, metadata={"help": "Like train_file, scored at the end of training."})
    source_lang: str | None = field(default=None, metadata={"help": "Source language key or column, e.g. en."})
    target_lang: str | None = field(default=None, metadata={"help": "Target language key or column, e.g. de."})
    source_column: str | None = field(default=None, metadata={"help": "Flat source column if not named source_lang."})
    target_column: str | None = field(default=None, metadata={"help": "Flat target column if not named target_lang."})
    streaming: bool = field(default=False, metadata={"help": "Stream the training data (needs --max_steps)."})
    shuffle_buffer_size: int = field(
        default=20000,
        metadata={"help": "Streaming: pairs read, shuffled and packed into token-budget batches together."},
    )
    max_source_length: int = field(default=256, metadata={"help": "Longer source sentences are dropped (and counted)."})
    max_target_length: int = field(default=256, metadata={"help": "Longer target sentences are dropped (and counted)."})
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes that tokenize (default: a core each, for 50000 pairs or more)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training pairs."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many validation pairs."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Use only this many test pairs."})
    builtin_seed: int = field(default=0, metadata={"help": "Seed of the built-in task's data."})
    builtin_train_size: int = field(default=20000, metadata={"help": "Training pairs of the built-in task."})


@dataclass
class RecipeArguments:
    _argument_group_name = "recipe, decoding and re-runs"

    recipe: str | None = field(
        default=None,
        metadata={
            "help": "builtin, paper, paper_big, or a JSON/YAML file of arguments. Default: builtin without data "
            "arguments, paper with them."
        },
    )
    max_tokens_per_batch: int | None = field(
        default=None,
        metadata={
            "help": "Pack training batches by length up to this many source (and target) tokens per device "
            "(§5.1; the paper: 25000 per step over 8 GPUs). Unset: per_device_train_batch_size sentences."
        },
    )
    paper_learning_rate: bool = field(
        default=False,
        metadata={"help": "Set learning_rate to d_model^-0.5 * warmup_steps^-0.5, the peak of the paper's schedule."},
    )
    short_run_steps: int = field(
        default=0,
        metadata={
            "help": "A run of fewer --max_steps than this trains short_run_config_overrides' model, unless --preset "
            "or --config_overrides is given or a model is fine-tuned (paper: 4000, its warm-up). 0: never."
        },
    )
    short_run_config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Config values for a run shorter than short_run_steps (paper: d_model 256, 3+3 layers; its base "
            "model learned nothing from the source in 1000 steps, docs/quality.md)."
        },
    )
    num_beams: int = field(default=4, metadata={"help": "Beam size saved in generation_config (§6.1: 4)."})
    length_penalty: float = field(default=0.6, metadata={"help": "Length penalty alpha saved in generation_config (§6.1: 0.6)."})
    max_new_tokens_beyond_source: int = field(
        default=50, metadata={"help": "Maximum output length = input length + this (§6.1: 50)."}
    )
    num_samples_to_show: int = field(default=5, metadata={"help": "Test sentences printed with their translations."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train from scratch into an output folder that holds a run or a model, replacing it. Without it, "
            "a run of the same model with steps left (or asked for more) is resumed and anything else refused."
        },
    )


PROJECT_ARGUMENTS = (ModelArguments, DataArguments, RecipeArguments)


def _recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.json"
        if not path.exists():
            known = sorted(p.stem for p in RECIPES_DIR.glob("*.json"))
            raise ValueError(f"Unknown recipe {name_or_path!r}; choose one of {known} or give a .json/.yaml file.")
    if not path.exists():
        raise FileNotFoundError(f"Recipe file {path} does not exist.")
    return path


def read_recipe_file(name_or_path: str) -> dict:
    """The values written in one recipe (a shipped name or a JSON/YAML file), without its base."""
    path = _recipe_path(name_or_path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as err:
            raise ImportError("Reading YAML needs PyYAML: pip install 'hf-vanilla-transformer[train]'.") from err
        values = yaml.safe_load(text)
    else:
        values = json.loads(text)
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values, got {type(values).__name__}.")
    return values


def load_recipe(name_or_path: str, _named_by: tuple[str, ...] = (), default_base: str | None = None) -> dict:
    """A recipe's values on top of those of the recipe it names under "recipe" (paper_big builds on paper),
    or on `default_base` when it names none."""
    values = read_recipe_file(name_or_path)
    base = values.pop("recipe", None) or default_base
    if base:
        chain = (*_named_by, name_or_path)
        if base in chain:
            raise ValueError(f"Recipes name each other in a loop: {' -> '.join((*chain, base))}.")
        values = {**load_recipe(base, chain), **values}
    return values


def recipe_of(probe: argparse.Namespace) -> tuple[str, dict]:
    """The recipe a command line asks for (by --recipe, or by whether it names data) and its values."""
    data_given = any(getattr(probe, k, None) for k in ("dataset_name", "train_file"))
    recipe_name = probe.recipe or ("paper" if data_given else "builtin")
    default_base = None
    if Path(recipe_name).suffix:
        # A user's file that names no base builds on the default one, so it only needs what it changes.
        in_file = read_recipe_file(recipe_name)
        data_given = data_given or any(in_file.get(k) for k in ("dataset_name", "train_file"))
        default_base = "paper" if data_given else "builtin"
    return recipe_name, load_recipe(recipe_name, default_base=default_base)


def check_recipe_names(recipe_name: str, recipe: dict, known: set[str]) -> None:
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise ValueError(f"Recipe {recipe_name!r} sets unknown arguments {unknown}; see hf-vanilla-train --help.")


# --- the Trainer's options, from the source of Seq2SeqTrainingArguments ---

# The Trainer's options --help shows; --help_trainer shows all of them (some 120).
TRAINER_OPTIONS_SHOWN = (
    "output_dir", "num_train_epochs", "max_steps", "learning_rate", "warmup_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "eval_strategy", "save_strategy", "save_steps", "seed", "bf16", "fp16",
    "resume_from_checkpoint", "push_to_hub", "hub_model_id", "log_level", "report_to",
)  # fmt: skip
_TRAINER_CLASSES = (("training_args.py", "TrainingArguments"), ("training_args_seq2seq.py", "Seq2SeqTrainingArguments"))
_ENUM_FILES = ("training_args.py", "trainer_utils.py", "debug_utils.py")  # where the Enums of its annotations live


@dataclass(frozen=True)
class Option:
    """One dataclass field as an option: its annotation (text), default (`dataclasses.MISSING` when not a literal)
    and help."""

    name: str
    annotation: str
    default: object = dataclasses.MISSING
    help: str = ""


def _literal(node: ast.AST | None) -> object:
    try:
        return ast.literal_eval(node) if node is not None else dataclasses.MISSING
    except ValueError:
        return dataclasses.MISSING


def _field_option(statement: ast.AnnAssign) -> Option | None:
    """The option of `name: annotation = field(default=..., metadata={"help": ...})`; None for an init=False field."""
    name, annotation = statement.target.id, ast.unparse(statement.annotation)
    value = statement.value
    if not (isinstance(value, ast.Call) and getattr(value.func, "id", None) == "field"):
        return Option(name, annotation, _literal(value))
    keywords = {keyword.arg: keyword.value for keyword in value.keywords}
    if _literal(keywords.get("init")) is False:
        return None
    metadata = _literal(keywords.get("metadata"))
    text = metadata.get("help", "") if isinstance(metadata, dict) else ""
    return Option(name, annotation, _literal(keywords.get("default")), text if isinstance(text, str) else "")


@functools.cache
def trainer_options() -> tuple[tuple[Option, ...], dict[str, tuple[str, ...]]] | None:
    """`Seq2SeqTrainingArguments`' options and the values of the Enums their annotations name, read from transformers'
    source without importing it (which imports torch); None where that source is not laid out so."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    try:
        options = {}
        for file, name in _TRAINER_CLASSES:
            tree = ast.parse((folder / file).read_text(encoding="utf-8"))
            body = next(node.body for node in tree.body if isinstance(node, ast.ClassDef) and node.name == name)
            for statement in body:
                if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                    option = _field_option(statement)
                    if option is None:
                        options.pop(statement.target.id, None)
                    else:
                        options[option.name] = option
        enums = {}
        for file in _ENUM_FILES:
            for node in ast.parse((folder / file).read_text(encoding="utf-8")).body:
                if isinstance(node, ast.ClassDef) and any("Enum" in ast.unparse(base) for base in node.bases):
                    values = [_literal(s.value) for s in node.body if isinstance(s, ast.Assign)]
                    enums[node.name] = tuple(v for v in values if isinstance(v, str))
    except (OSError, SyntaxError, StopIteration):
        return None
    return tuple(options.values()), enums


def _union(annotation: str) -> list[str]:
    """The members of a union annotation, as text: "int | None" -> ["int", "None"]; Optional[X] -> [X, "None"]."""
    if match := re.fullmatch(r"(?:typing\.)?Optional\[(.*)\]", annotation):
        return [*_union(match.group(1)), "None"]
    if match := re.fullmatch(r"(?:typing\.)?Union\[(.*)\]", annotation):
        annotation = match.group(1).replace(",", "|")
    parts, depth, start = [], 0, 0
    for i, char in enumerate(annotation):
        depth += char == "["
        depth -= char == "]"
        if char == "|" and depth == 0:
            parts.append(annotation[start:i].strip())
            start = i + 1
    return [*parts, annotation[start:].strip()]


def _option_type(annotation: str) -> str:
    """The type HfArgumentParser gives a field's option (its rule for unions: str beside another type gives that
    type; X | None gives X, except bool | None)."""
    parts = _union(annotation)
    if len(parts) == 2 and "None" not in parts and "str" in parts:
        return parts[0] if parts[1] == "str" else parts[1]
    if "None" in parts and "bool" not in parts and len(parts) > 1:
        return parts[0] if parts[1] == "None" else parts[1]
    return "bool" if "bool" in parts and set(parts) <= {"bool", "None"} else parts[0]


def _text_to_bool(text: str) -> bool:
    if text.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if text.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"Truthy value expected: got {text} but expected one of yes/no, true/false, t/f, y/n, 1/0.")


def _add_option(group, option: Option, enums: dict[str, tuple[str, ...]], shown: bool = True) -> None:
    """`option` as HfArgumentParser adds it (--name and --name-with-dashes; a bool takes an optional value, and
    --no_name turns it off; an Enum or Literal takes its values; list[X] takes one or more)."""
    kind = _option_type(option.annotation)
    flags = [f"--{option.name}"] + ([f"--{option.name.replace('_', '-')}"] if "_" in option.name else [])
    help_text = (option.help.replace("%", "%%") or " ") if shown else argparse.SUPPRESS
    default = None if option.default is dataclasses.MISSING else option.default
    kwargs: dict = {"dest": option.name, "default": default, "help": help_text}
    if match := re.fullmatch(r"(?:typing\.)?Literal\[(.*)\]", kind):
        kwargs["choices"] = ast.literal_eval(f"({match.group(1)},)")
    elif kind in enums:
        kwargs["choices"] = enums[kind]
    elif kind == "bool":
        kwargs.update(type=_text_to_bool, nargs="?", const=True, metavar="BOOL")
    elif kind in ("int", "float"):
        kwargs["type"] = int if kind == "int" else float
    elif match := re.fullmatch(r"(?:typing\.)?[Ll]ist\[(.*)\]", kind):
        kwargs.update(nargs="+", type={"int": int, "float": float}.get(match.group(1), str))
    group.add_argument(*flags, **kwargs)
    if kind == "bool":
        off = [f"--no_{option.name}"] + ([f"--no-{option.name.replace('_', '-')}"] if "_" in option.name else [])
        group.add_argument(*off, dest=option.name, action="store_false", help=argparse.SUPPRESS)


def _project_options(arguments: type) -> list[Option]:
    # A field's type is its annotation's text, until HfArgumentParser (train.py) resolves it to the type in place.
    def text(kind) -> str:
        return kind if isinstance(kind, str) else getattr(kind, "__name__", None) or str(kind)

    return [Option(f.name, text(f.type), f.default, f.metadata.get("help", "")) for f in dataclasses.fields(arguments)]


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written, and each option's default."""


class _Help(argparse.Action):
    def __init__(self, option_strings, dest, full: bool = False, help: str | None = None):
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)
        self.full = full

    def __call__(self, parser, namespace, values, option_string=None):
        (CommandLine(full=True) if self.full else parser).print_help()
        parser.exit()


class CommandLine(OneLineErrors, argparse.ArgumentParser):
    """hf-vanilla-train's options, without torch or transformers: this project's three groups first, then the
    Trainer's. --help shows the Trainer's most used options (`TRAINER_OPTIONS_SHOWN`), --help_trainer (`full`) all of
    them; errors are one line. Without a readable Seq2SeqTrainingArguments source it knows only this project's options
    and leaves the others to train.py's parser."""

    def __init__(self, full: bool = False):
        super().__init__(
            prog="hf-vanilla-train",
            usage="%(prog)s [RECIPE.json|RECIPE.yaml] [--option VALUE ...]",
            description=__doc__,
            formatter_class=_HelpFormatter,
            add_help=False,
        )
        help_group = self.add_argument_group("help")
        help_group.add_argument("-h", "--help", action=_Help, help="Show this project's options and the most used "
                                "of the Trainer's, then exit.")  # fmt: skip
        help_group.add_argument("--help_trainer", action=_Help, full=True, help="Show every option, then exit.")
        self.names: set[str] = set()  # every option's name (its dest), for the recipes' check
        for arguments in PROJECT_ARGUMENTS:
            group = self.add_argument_group(arguments._argument_group_name)
            for option in _project_options(arguments):
                _add_option(group, option, {})
                self.names.add(option.name)
        self.trainer = trainer_options()
        if self.trainer is None:  # the output folder still decides the default below
            self.add_argument_group("transformers' Seq2SeqTrainingArguments").add_argument("--output_dir")
            return
        options, enums = self.trainer
        title = "transformers' Seq2SeqTrainingArguments"
        if not full:
            title += (
                f": the most used of its {len(options)}; every one works (hf-vanilla-train --help_trainer lists them)"
            )
        group = self.add_argument_group(title)
        for option in options:
            _add_option(group, option, enums, shown=full or option.name in TRAINER_OPTIONS_SHOWN)
            self.names.add(option.name)

    def read(self, argv: list[str]) -> argparse.Namespace:
        """The options of `argv`; a mistake ends the command (one line, exit status 2), as --help does (exit 0)."""
        if self.trainer is None:
            return self.parse_known_args(argv)[0]
        return self.parse_args(argv)


def read_command_line(argv: list[str]) -> tuple[argparse.Namespace, str, dict]:
    """The options of `argv` (a leading RECIPE.json/.yaml stands for --recipe RECIPE), the recipe's name and values:
    what can be wrong with them is said here, before torch or transformers is imported."""
    parser = CommandLine()
    probe = parser.read(recipe_first(argv))
    recipe_name, recipe = recipe_of(probe)
    if parser.trainer is not None:
        check_recipe_names(recipe_name, recipe, parser.names)
    return probe, recipe_name, recipe


def recipe_first(argv: list[str]) -> list[str]:
    return ["--recipe", *argv] if argv and argv[0].endswith((".json", ".yaml", ".yml")) else list(argv)
