"""Where a model comes from, checked before anything loads: a folder that holds a saved model, or a Hub id.

A name that is not a folder counts as a Hub id only when it has the form `namespace/name` and does not look like a
path, and a Hub id is looked up in the local cache before the Hub is asked, once, without retries. So a mistyped
folder fails at once, naming the folder, instead of after a minute of Hub retries that end in "We couldn't connect
to 'https://huggingface.co'". Each check raises OSError (FileNotFoundError, NotADirectoryError) with the message a
user needs. Light to import: the console scripts check a folder before torch is loaded.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def check_model_folder(
    folder: str | os.PathLike, *, needs_config: bool = True, needs_tokenizer: bool = True
) -> Path:
    """`folder` as a Path, when it is a folder holding a saved model (config.json, with `needs_config`) and its
    tokenizer (with `needs_tokenizer`); FileNotFoundError or NotADirectoryError saying what is missing otherwise."""
    text = os.fspath(folder)
    path = Path(text).expanduser()
    what = "Model" if needs_config else "Tokenizer"
    if not path.is_dir():
        if path.exists():
            raise NotADirectoryError(f"{what} folder {text} is a file, not a folder.")
        raise FileNotFoundError(_missing_folder_message(text, what) + ".")
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
    return path


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

    A folder is checked by `check_model_folder`. A name that is not a folder is a Hub id only when it has the form
    `namespace/name` and does not look like a path (`./x`, `/x`, `~/x`, `x/`, or `outputs/x` where `outputs` is a
    folder here); otherwise FileNotFoundError says the folder does not exist. A Hub id not in the local cache fails
    with OSError when the Hub is offline (`HF_HUB_OFFLINE=1`, `local_files_only`), cannot be reached, or has no such
    model.
    """
    text = os.fspath(name_or_path)
    exists = Path(text).expanduser().exists()
    if not exists and not _looks_like_a_path(text) and _is_hub_id(text):
        filename = "config.json" if needs_config else "tokenizer_config.json"
        return _check_hub_id(text, filename, revision, local_files_only, cache_dir)
    if not exists and "/" not in text:
        what = "Model" if needs_config else "Tokenizer"
        raise FileNotFoundError(
            f"{_missing_folder_message(text, what)}, and it is not a Hub id either (those read namespace/name)."
        )
    check_model_folder(text, needs_config=needs_config, needs_tokenizer=needs_tokenizer)
    return {}


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
            return f"{message}; {parent} holds {shown}"
    return message


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
