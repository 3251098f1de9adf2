"""The encoder-decoder Transformer of Vaswani et al. (2017) as a transformers model.

Importing the package registers the config and models with `AutoConfig`, `AutoModel` and
`AutoModelForSeq2SeqLM`, and marks them so that `save_pretrained` writes `auto_map` and the code beside
the weights (a saved folder then loads with `trust_remote_code=True` where this package is not installed).
"""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .configuration_vanilla_transformer import TABLE3, VanillaTransformerConfig, table3_config, table3_training_arguments
from .modeling_vanilla_transformer import (
    VanillaTransformerForConditionalGeneration,
    VanillaTransformerModel,
    VanillaTransformerPreTrainedModel,
)

AutoConfig.register(VanillaTransformerConfig.model_type, VanillaTransformerConfig, exist_ok=True)
AutoModel.register(VanillaTransformerConfig, VanillaTransformerModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(VanillaTransformerConfig, VanillaTransformerForConditionalGeneration, exist_ok=True)
VanillaTransformerConfig.register_for_auto_class()
VanillaTransformerModel.register_for_auto_class("AutoModel")
VanillaTransformerForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")

__version__ = "0.1.0"

__all__ = [
    "TABLE3",
    "VanillaTransformerConfig",
    "VanillaTransformerForConditionalGeneration",
    "VanillaTransformerModel",
    "VanillaTransformerPreTrainedModel",
    "table3_config",
    "table3_training_arguments",
]
