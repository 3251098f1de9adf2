"""The `translation` and `text2text-generation` pipelines of transformers 4.x, which transformers 5 removed, for
sequence-to-sequence models.

`pipe(text)` gives `[{"translation_text": ...}]` (`"generated_text"` for text2text-generation), one dict per
returned sequence (`num_return_sequences`); a list of texts gives a list of those, each flattened to its one dict
when every text has one sequence, as 4.x did. Each text is tokenized whole: nothing is truncated unless the call asks
for `truncation=True`. `generate()` decodes with the model's generation config, under the keyword arguments given to
the pipeline and then to the call. Batches (`batch_size`) are padded as the tokenizer pads.

This file imports only transformers: a saved model folder carries a copy of it, named in config.json's
`custom_pipelines`, so that `transformers.pipeline("translation", model=folder, trust_remote_code=True)` runs it where
hf_vanilla_transformer is not installed.
"""

from transformers import Pipeline


class TranslationPipeline(Pipeline):
    """Translates text with a sequence-to-sequence model (`AutoModelForSeq2SeqLM`)."""

    return_name = "translation"

    _pipeline_calls_generate = True
    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Where token ids enter: checked once here, rather than read back from the device at every model call.
        vocab_size = getattr(self.model.config, "vocab_size", None)
        if vocab_size is not None and len(self.tokenizer) > vocab_size:
            raise ValueError(
                f"The tokenizer has {len(self.tokenizer)} tokens but the model's vocabulary only {vocab_size}, so ids "
                f"from {vocab_size} on have no embedding: they do not belong together. Use the tokenizer saved with "
                "the model, or call model.resize_token_embeddings(len(tokenizer))."
            )

    def _sanitize_parameters(self, return_tensors=None, clean_up_tokenization_spaces=None, truncation=None, **kwargs):
        preprocess_params = {} if truncation is None else {"truncation": truncation}
        postprocess_params = {}
        if return_tensors is not None:
            postprocess_params["return_tensors"] = return_tensors
        if clean_up_tokenization_spaces is not None:
            postprocess_params["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
        return preprocess_params, kwargs, postprocess_params  # the rest goes to generate()

    def __call__(self, inputs, **kwargs):
        """`inputs`: a text, a list (or tuple) of texts, or a generator or dataset of texts (whose results come as
        they are made). Keyword arguments: `batch_size`, `return_tensors` (token ids instead of text), `truncation`,
        `clean_up_tokenization_spaces`, and any of `generate()` (`num_beams`, `max_new_tokens`, ...)."""
        inputs = list(inputs) if isinstance(inputs, tuple) else inputs
        result = super().__call__(inputs, **kwargs)
        if isinstance(inputs, list) and all(isinstance(text, str) for text in inputs):
            if all(len(records) == 1 for records in result):
                return [records[0] for records in result]
        return result

    def preprocess(self, text, truncation=False):
        if not isinstance(text, str):
            raise TypeError(f"{type(self).__name__} takes a text or a list of texts, got {type(text).__name__}.")
        encoded = self.tokenizer(text, truncation=truncation, return_tensors="pt")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def _forward(self, model_inputs, **generate_kwargs):
        batch = model_inputs["input_ids"].shape[0]
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs, return_dict_in_generate=False)
        output_ids = self.model.generate(**model_inputs, **generate_kwargs)
        return {"output_ids": output_ids.reshape(batch, -1, output_ids.shape[-1])}

    def postprocess(self, model_outputs, return_tensors=False, clean_up_tokenization_spaces=None):
        if return_tensors:
            return [{f"{self.return_name}_token_ids": ids} for ids in model_outputs["output_ids"][0]]
        decode_options = {"skip_special_tokens": True}
        if clean_up_tokenization_spaces is not None:
            decode_options["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
        texts = self.tokenizer.batch_decode(model_outputs["output_ids"][0], **decode_options)
        return [{f"{self.return_name}_text": text} for text in texts]


class Text2TextGenerationPipeline(TranslationPipeline):
    """The same for any text-to-text task: `[{"generated_text": ...}]`."""

    return_name = "generated"


PIPELINES = {"translation": TranslationPipeline, "text2text-generation": Text2TextGenerationPipeline}


def custom_pipelines() -> dict:
    """config.json's `custom_pipelines` for the classes of this file, in the form `Pipeline.save_pretrained` writes:
    what `transformers.pipeline` reads to find a task's code in a model's folder."""
    module = __name__.rsplit(".", 1)[-1]
    return {
        task: {"impl": f"{module}.{cls.__name__}", "pt": ["AutoModelForSeq2SeqLM"], "type": "text"}
        for task, cls in PIPELINES.items()
    }
