"""The encoder-decoder Transformer of Vaswani et al. (2017) as a transformers model.

Importing the package registers the config and models with `AutoConfig`, `AutoModel` and
`AutoModelForSeq2SeqLM`, and marks them so that `save_pretrained` writes `auto_map` and the code beside
the weights (a saved folder then loads with `trust_remote_code=True` where this package is not installed). It also
registers the `translation` and `text2text-generation` pipelines, which transformers 5 removed, with transformers'
pipeline registry; `hf_vanilla_transformer.pipeline` is `transformers.pipeline` with those two tasks.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_vanilla_transformer import TABLE3, VanillaTransformerConfig, table3_config
from .convert_marian import from_marian
from .modeling_vanilla_transformer import (
    VanillaTransformerForConditionalGeneration,
    VanillaTransformerModel,
    VanillaTransformerPreTrainedModel,
)
from .pipeline_vanilla_transformer import PIPELINES, Text2TextGenerationPipeline, TranslationPipeline
from .quantization import load_int8, quantize_int8  # also registers the int8 folders' quantization config
from .translation import paper_generation_config, pipeline



def register_with_transformers() -> None:
    """The Auto classes and the two pipelines point at this package's classes (done at import; call it again if
    another copy of the package, say an older commit a benchmark imports, registered its own)."""
    AutoConfig.register(VanillaTransformerConfig.model_type, VanillaTransformerConfig, exist_ok=True)
    AutoModel.register(VanillaTransformerConfig, VanillaTransformerModel, exist_ok=True)
    AutoModelForSeq2SeqLM.register(VanillaTransformerConfig, VanillaTransformerForConditionalGeneration, exist_ok=True)
    VanillaTransformerConfig.register_for_auto_class()
    VanillaTransformerModel.register_for_auto_class("AutoModel")
    VanillaTransformerForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
    for task, pipeline_class in PIPELINES.items():
        PIPELINE_REGISTRY.register_pipeline(task, pipeline_class=pipeline_class, pt_model=AutoModelForSeq2SeqLM, type="text")


register_with_transformers()

__version__ = "0.1.0"


def __getattr__(name: str):
    # Table 3's training values live with the Trainer; imported on first use, so that importing the package does not
    # import the training stack (datasets, sacrebleu, accelerate).
    if name in ("TABLE3_TRAINING", "table3_training_arguments"):
        from . import training

        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "TABLE3",
    "TABLE3_TRAINING",
    "Text2TextGenerationPipeline",
    "TranslationPipeline",
    "VanillaTransformerConfig",
    "VanillaTransformerForConditionalGeneration",
    "VanillaTransformerModel",
    "VanillaTransformerPreTrainedModel",
    "from_marian",
    "load_int8",
    "paper_generation_config",
    "pipeline",
    "quantize_int8",
    "register_with_transformers",
    "table3_config",
    "table3_training_arguments",
]
