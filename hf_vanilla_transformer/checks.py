"""What can be wrong with what a user hands the loaders and the translation code, found before the work starts and
said in one sentence; and what translating did that the output alone does not show, said after it.

- `check_model_source`: a model's folder or Hub id. A folder must hold a saved model; a name that is not a folder
  counts as a Hub id only when it has the form `namespace/name` and does not look like a path, and a Hub id is looked
  up in the local cache before the Hub is asked, once, without retries. So a mistyped folder fails at once, naming
  the folder, instead of after a minute of Hub retries that end in "We couldn't connect to 'https://huggingface.co'".
- `check_device`: a device torch can use on this machine.
- `tokenizer_max_length`: the input length a model can serve, for `tokenizer.model_max_length`: none for sinusoidal
  positions (§3.5), so that transformers does not warn of "indexing errors" that cannot happen.
- `check_sentences`: empty sentences (left out, with a warning: their translation is empty), sentences longer
  than a model with learned positions can serve (refused, with the numbers), and sentences far longer than any the
  model was trained on (translated, with a warning: see `long_input_limit`).
- `OutputLimitWatch`: which translations stopped at the output length limit (source + 50 tokens, §6.1) before their
  end token, so that a cut translation is said rather than printed as if whole.

Every check raises ValueError or OSError (FileNotFoundError, NotADirectoryError) with the message a user needs.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

# transformers' VERY_LARGE_INTEGER: what `model_max_length` holds for a tokenizer whose model has no length limit.
NO_LENGTH_LIMIT = int(1e30)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


# --- a model's folder or Hub id ---


def check_model_source(
    name_or_path: str | os.PathLike,
    *,
    needs_config: bool = True,
    needs_tokenizer: bool = True,
    revision: str | None = None,
    local_files_only: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> dict:
    """Checks that `name_or_path` names a saved model (with `needs_config`) and its tokenizer (with `needs_tokenizer`)
    before anything is loaded, and returns keyword arguments for `from_pretrained`: `{"local_files_only": True}` for
    a Hub id in the local cache when the Hub cannot be reached, else `{}`.

    A name that is not a folder is a Hub id only when it has the form `namespace/name` and does not look like a path
    (`./x`, `/x`, `~/x`, `x/`, or `outputs/x` where `outputs` is a folder here); otherwise FileNotFoundError says the
    folder does not exist. A Hub id not in the local cache fails with OSError when the Hub is offline
    (`HF_HUB_OFFLINE=1`, `local_files_only`), cannot be reached, or has no such model.
    """
    what = "Model" if needs_config else "Tokenizer"
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        _check_folder(path, needs_config, needs_tokenizer)
        return {}
    if path.exists():
        raise NotADirectoryError(f"{what} folder {text} is a file, not a folder.")
    if _looks_like_a_path(text) or not _is_hub_id(text):
        raise FileNotFoundError(_missing_folder_message(text, what))
    filename = "config.json" if needs_config else "tokenizer_config.json"
    return _check_hub_id(text, filename, revision, local_files_only, cache_dir)


def _check_folder(path: Path, needs_config: bool, needs_tokenizer: bool) -> None:
    if needs_config and not (path / "config.json").is_file():
        checkpoints = sorted(
            (int(match.group(1)), child)
            for child in path.iterdir()
            if (match := _CHECKPOINT.match(child.name)) and (child / "config.json").is_file()
        )
        if checkpoints:
            hint = f"; it holds checkpoints, the newest is {checkpoints[-1][1]}"
        else:
            hint = "; give a folder hf-vanilla-train or save_pretrained wrote (config.json, weights, tokenizer)"
        raise FileNotFoundError(f"{path} holds no model: it has no config.json{hint}.")
    if needs_tokenizer and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{path} holds no tokenizer ({' or '.join(TOKENIZER_FILES)}); save the model's tokenizer there with "
            "tokenizer.save_pretrained."
        )


def _looks_like_a_path(text: str) -> bool:
    if os.path.isabs(text) or text.startswith(("./", "../", "~", ".\\", "..\\")) or text.endswith(("/", "\\")):
        return True
    if "\\" in text:
        return True
    first, slash, _ = text.partition("/")
    return bool(slash) and Path(first).is_dir()  # 'outputs/typo' where outputs/ is a folder here


def _is_hub_id(text: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if text.count("/") != 1:
        return False  # this package's models on the Hub are always namespace/name
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def _missing_folder_message(text: str, what: str) -> str:
    message = f"{what} folder {text} does not exist"
    parent = Path(text).expanduser().parent
    if parent != Path(".") and parent.is_dir():
        models = sorted(child.name for child in parent.iterdir() if (child / "config.json").is_file())
        if models:
            shown = ", ".join(models[:5]) + (", ..." if len(models) > 5 else "")
            return f"{message}; {parent} holds {shown}."
    if "/" not in text:
        return f"{message}, and it is not a Hub id either (those read namespace/name)."
    return message + "."


def _check_hub_id(repo_id: str, filename: str, revision: str | None, local_files_only: bool, cache_dir) -> dict:
    from huggingface_hub import constants, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision), str)
    if local_files_only or constants.is_offline_mode():
        if cached:
            return {}
        reason = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else "local_files_only is set"
        raise OSError(
            f"{repo_id} is not a folder here, and as a Hub id it is not in the local Hub cache "
            f"({cache_dir or constants.HF_HUB_CACHE}); {reason}, so the Hub is not asked."
        )
    answer = _ask_hub(repo_id, filename, revision)
    if answer == "found":
        return {}
    if cached:
        logger.warning("The Hub cannot be reached (%s): %s loads from the local cache.", answer, repo_id)
        return {"local_files_only": True}
    if answer == "missing":
        raise OSError(
            f"{repo_id} is neither a folder here nor a model on the Hub (if it is private or gated, log in with "
            "`hf auth login`)."
        )
    raise OSError(f"{repo_id} is not a folder here, and the Hub cannot be reached to look for it ({answer}).")


def _ask_hub(repo_id: str, filename: str, revision: str | None) -> str:
    """"found", "missing", or why the Hub gave no answer: one request, no retries."""
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session

    url = hf_hub_url(repo_id, filename, revision=revision)
    try:
        response = get_session().head(
            url, headers=build_hf_headers(), follow_redirects=True, timeout=constants.HF_HUB_ETAG_TIMEOUT
        )
    except Exception as error:  # no network, no name resolution, a proxy, a timeout: all mean no answer
        return " ".join(str(error).split()) or type(error).__name__
    if response.status_code < 400:
        return "found"
    if response.status_code in (401, 403, 404):
        return "missing"
    return f"HTTP {response.status_code}"


# --- a device ---


def check_device(device: str | None) -> str:
    """`device` as torch names it, when torch can use it on this machine (ValueError otherwise); None gives cuda when
    available, else cpu."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"Device {device!r} is not a device name torch knows (cpu, cuda, cuda:1, mps).") from error
    if parsed.type == "cpu":
        return str(parsed)
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if accelerator is None or accelerator.type != parsed.type:
        if parsed.type == "cuda" and torch.version.cuda is None:
            why = f"this torch ({torch.__version__}) is built without CUDA"
        else:
            why = f"this machine has no {parsed.type} device torch can use"
        other = f" or {accelerator.type}" if accelerator is not None else ""
        raise ValueError(f"Device {device!r} is not available: {why}. Use cpu{other}.")
    count = torch.accelerator.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise ValueError(f"Device {device!r} is not available: this machine has {count} {parsed.type} device(s).")
    return str(parsed)


# --- lengths ---


def tokenizer_max_length(config) -> int:
    """The longest input the model serves, for `tokenizer.model_max_length`: `max_position_embeddings` for learned
    positions, no limit for sinusoids (they extend to any length)."""
    if getattr(config, "position_embedding", None) == "learned":
        return config.max_position_embeddings
    return NO_LENGTH_LIMIT


# The generation config's record of the longest training source, in tokens (hf-vanilla-train writes it).
LONGEST_TRAINING_SOURCE = "longest_training_source"
# A model translates text like its training data: far past the longest source it saw, translations come out short
# or garbled (a model trained on sentences of about 30 tokens rendered 2000 words in 13).
LONG_INPUT_FACTOR = 2


def long_input_limit(model) -> tuple[int, str] | None:
    """The source length (tokens) past which a translation is not to be trusted, and the reason in words: twice the
    longest training source where the generation config records it (`LONGEST_TRAINING_SOURCE`), else the model's
    `max_position_embeddings`, the length its config says it serves. None when neither is known."""
    longest = getattr(model.generation_config, LONGEST_TRAINING_SOURCE, None)
    if longest:
        return LONG_INPUT_FACTOR * longest, f"twice the longest source the model was trained on ({longest} tokens)"
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions:
        return positions, f"the model's max_position_embeddings ({positions})"
    return None


def output_limit(generation_config, source_length: int, max_new_tokens: int | None = None) -> int:
    """The most tokens `generate()` makes for a source of `source_length` tokens: `max_new_tokens` when given, else
    the generation config's own, else source length + `max_new_tokens_beyond_source` (§6.1), else its max_length."""
    if max_new_tokens is not None:
        return max_new_tokens
    if generation_config.max_new_tokens is not None:
        return generation_config.max_new_tokens
    beyond = getattr(generation_config, "max_new_tokens_beyond_source", None)
    if beyond is not None:
        return source_length + int(beyond)
    return generation_config.max_length


def _numbers(indices: Sequence[int]) -> str:
    indices = list(indices)
    shown = ", ".join(str(i + 1) for i in indices[:10])
    return shown + (", ..." if len(indices) > 10 else "")


def check_sentences(model, tokenizer, sentences: Sequence[str], max_new_tokens: int | None = None) -> list[int]:
    """The indices of the sentences to translate. Empty sentences are left out with a warning (their translation is
    empty), and sentences longer than `long_input_limit` are warned of. With learned positions, a sentence longer
    than `max_position_embeddings` tokens, or whose output limit (see `output_limit`) is, raises ValueError naming
    it: the model cannot serve it, and nothing is truncated."""
    empty = [i for i, sentence in enumerate(sentences) if not sentence.strip()]
    if len(empty) == 1:
        logger.warning("Sentence %s is empty: its translation is empty.", _numbers(empty))
    elif empty:
        logger.warning("Sentences %s are empty: their translations are empty.", _numbers(empty))
    keep = sorted(set(range(len(sentences))) - set(empty))
    if not keep:
        return keep
    # verbose=False: the tokenizer's own "indexing errors" warning would say less than the messages below.
    lengths = [len(ids) for ids in tokenizer([sentences[i] for i in keep], verbose=False)["input_ids"]]
    config = model.config
    if getattr(config, "position_embedding", None) == "learned":
        positions = config.max_position_embeddings
        for i, length in zip(keep, lengths):
            limit = output_limit(model.generation_config, length, max_new_tokens)
            if length > positions:
                raise ValueError(
                    f"Sentence {i + 1} is {length} tokens long, but the model's learned positions stop at {positions} "
                    "(max_position_embeddings): shorten it or split it."
                )
            if limit > positions:
                raise ValueError(
                    f"Sentence {i + 1} ({length} tokens) has an output limit of {limit} tokens, but the model's "
                    f"learned positions stop at {positions} (max_position_embeddings): shorten it or split it, or set "
                    f"max_new_tokens to {positions} or less."
                )
    _warn_long(model, keep, lengths)
    return keep


def _warn_long(model, indices: Sequence[int], lengths: Sequence[int]) -> None:
    rule = long_input_limit(model)
    if rule is None:
        return
    limit, reason = rule
    long = [(i, length) for i, length in zip(indices, lengths) if length > limit]
    if not long:
        return
    which = f"Sentence {long[0][0] + 1} is {long[0][1]} tokens long"
    if len(long) > 1:
        which = f"Sentences {_numbers([i for i, _ in long])} are up to {max(n for _, n in long)} tokens long"
    logger.warning(
        "%s, more than %s: expect a translation cut short or wrong, and split long text into sentences.", which, reason
    )


class OutputLimitWatch:
    """While active (`with OutputLimitWatch(model) as watch:`), records the sources whose generated sequence stopped at
    the length limit without an end token; `watch.cut(tokenizer, sentences)` gives their indices afterwards.

    It wraps the model's `generate` for the time being (an attribute of the instance, removed on exit), because the
    pipeline that translates returns text only, and text does not show whether the end token came."""

    def __init__(self, model):
        self.model = model
        self._cut_sources: set[tuple[int, ...]] = set()

    def __enter__(self) -> OutputLimitWatch:
        import torch

        generate = self.model.generate
        eos = self.model.generation_config.eos_token_id
        if eos is None:  # nothing marks an end: nothing to watch
            return self
        eos = torch.tensor(eos if isinstance(eos, list) else [eos])

        def watched_generate(*args, **kwargs):
            output = generate(*args, **kwargs)
            source = args[0] if args else kwargs.get("input_ids")
            sequences = output if isinstance(output, torch.Tensor) else getattr(output, "sequences", None)
            if source is None or sequences is None:
                return output
            mask = kwargs.get("attention_mask")
            mask = torch.ones_like(source) if mask is None else mask
            ended = torch.isin(sequences[:, 1:], eos.to(sequences.device)).any(-1)
            ended = ended.view(source.shape[0], -1).all(-1)  # every returned sequence of the source ended
            for ids, keep, done in zip(source.tolist(), mask.bool().tolist(), ended.tolist()):
                if not done:
                    self._cut_sources.add(tuple(i for i, k in zip(ids, keep) if k))
            return output

        self.model.generate = watched_generate
        return self

    def __exit__(self, *exc_info) -> None:
        if "generate" in vars(self.model):
            del self.model.generate  # the class's generate again

    def cut(self, tokenizer, sentences: Sequence[str], indices: Sequence[int] | None = None) -> list[int]:
        """The indices (among `indices`, default all) of the sentences whose translation was cut at the limit."""
        if not self._cut_sources:
            return []
        indices = range(len(sentences)) if indices is None else indices
        encoded = tokenizer([sentences[i] for i in indices], verbose=False)["input_ids"]
        return [i for i, ids in zip(indices, encoded) if tuple(ids) in self._cut_sources]


def warn_cut(cut: Sequence[int], max_new_tokens: int | None, generation_config) -> None:
    """The warning for translations that stopped at the output length limit."""
    if not cut:
        return
    beyond = getattr(generation_config, "max_new_tokens_beyond_source", None)
    if max_new_tokens is not None or generation_config.max_new_tokens is not None:
        limit = f"{max_new_tokens or generation_config.max_new_tokens} new tokens"
    elif beyond is not None:
        limit = f"source length + {beyond} tokens"
    else:
        limit = f"max_length {generation_config.max_length}"
    which = f"translation{'s' if len(cut) > 1 else ''} of sentence{'s' if len(cut) > 1 else ''} {_numbers(cut)}"
    logger.warning(
        "The %s stopped at the output length limit (%s) without an end token: cut short, probably. Raise "
        "max_new_tokens, or split the input.", which, limit,
    )  # fmt: skip
