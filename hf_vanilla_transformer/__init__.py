"""The encoder-decoder Transformer of Vaswani et al. (2017) as a transformers model.

Importing the package registers the config and models with `AutoConfig`, `AutoModel` and
`AutoModelForSeq2SeqLM`, and marks them so that `save_pretrained` writes `auto_map` and the code beside
the weights (a saved folder then loads with `trust_remote_code=True` where this package is not installed). It also
registers the `translation` and `text2text-generation` pipelines, which transformers 5 removed, with transformers'
pipeline registry; `hf_vanilla_transformer.pipeline` is `transformers.pipeline` with those two tasks.

The names below are imported on first use. A console script (hf-vanilla-train, ...) answers --help and argument
errors before it pays seconds for torch and transformers: in its process the package registers once the arguments
parse (`cli._errors.ArgumentParser`), or at the first use of one of its names.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Each public name and the module it lives in.
_HOMES = {
    "TABLE3": "configuration_vanilla_transformer",
    "VanillaTransformerConfig": "configuration_vanilla_transformer",
    "table3_config": "configuration_vanilla_transformer",
    "from_marian": "convert_marian",
    "VanillaTransformerForConditionalGeneration": "modeling_vanilla_transformer",
    "VanillaTransformerModel": "modeling_vanilla_transformer",
    "VanillaTransformerPreTrainedModel": "modeling_vanilla_transformer",
    "Text2TextGenerationPipeline": "pipeline_vanilla_transformer",
    "TranslationPipeline": "pipeline_vanilla_transformer",
    "load_int8": "quantization",
    "quantize_int8": "quantization",
    "paper_generation_config": "translation",
    "pipeline": "translation",
    # Table 3's training values live with the Trainer (datasets, sacrebleu, accelerate).
    "TABLE3_TRAINING": "training",
    "table3_training_arguments": "training",
}

if TYPE_CHECKING:
    from .configuration_vanilla_transformer import TABLE3, VanillaTransformerConfig, table3_config
    from .convert_marian import from_marian
    from .modeling_vanilla_transformer import (
        VanillaTransformerForConditionalGeneration,
        VanillaTransformerModel,
        VanillaTransformerPreTrainedModel,
    )
    from .pipeline_vanilla_transformer import Text2TextGenerationPipeline, TranslationPipeline
    from .quantization import load_int8, quantize_int8
    from .training import TABLE3_TRAINING, table3_training_arguments
    from .translation import paper_generation_config, pipeline

_registered = False


def register_with_transformers() -> None:
    """The Auto classes and the two pipelines point at this package's classes (done at import; call it again if
    another copy of the package, say an older commit a benchmark imports, registered its own)."""
    global _registered
    from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM
    from transformers.pipelines import PIPELINE_REGISTRY

    from . import quantization
    from .configuration_vanilla_transformer import VanillaTransformerConfig
    from .modeling_vanilla_transformer import VanillaTransformerForConditionalGeneration, VanillaTransformerModel
    from .pipeline_vanilla_transformer import PIPELINES

    AutoConfig.register(VanillaTransformerConfig.model_type, VanillaTransformerConfig, exist_ok=True)
    AutoModel.register(VanillaTransformerConfig, VanillaTransformerModel, exist_ok=True)
    AutoModelForSeq2SeqLM.register(VanillaTransformerConfig, VanillaTransformerForConditionalGeneration, exist_ok=True)
    VanillaTransformerConfig.register_for_auto_class()
    VanillaTransformerModel.register_for_auto_class("AutoModel")
    VanillaTransformerForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
    quantization.register_int8()  # the int8 folders' quantization config and quantizer
    for task, pipeline_class in PIPELINES.items():
        PIPELINE_REGISTRY.register_pipeline(task, pipeline_class=pipeline_class, pt_model=AutoModelForSeq2SeqLM, type="text")
    _registered = True


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not _registered:
        register_with_transformers()
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


def _started_by_console_script() -> bool:
    # The scripts pip installs run as `hf-vanilla-train` and the like (`hf-vanilla-train.exe` on Windows).
    return bool(sys.argv) and os.path.basename(sys.argv[0]).startswith("hf-vanilla-")


if not _started_by_console_script():
    register_with_transformers()

__all__ = sorted([*_HOMES, "register_with_transformers"])
