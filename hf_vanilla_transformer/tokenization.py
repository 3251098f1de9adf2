"""Train the shared source/target BPE vocabulary of the paper (§5.1) as a transformers tokenizer.

The paper encodes English-German with "byte-pair encoding [...] which has a shared source-target
vocabulary of about 37000 tokens". `train_bpe_tokenizer` learns such a vocabulary with the
`tokenizers` library and wraps it in a `PreTrainedTokenizerFast` that saves with `save_pretrained`
and reloads with `AutoTokenizer.from_pretrained`.

Text handling, so that `decode(encode(text), skip_special_tokens=True)` gives the text back:
runs of whitespace (spaces, tabs, newlines) are normalised to one space and the ends are stripped,
then words are marked with a leading "▁" (the SentencePiece "metaspace" convention) so the
decoder can restore the spaces exactly. Characters never seen in training become `<unk>`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ._validation import check_int

logger = logging.getLogger(__name__)

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
# The trainer assigns ids in this order, which is what fixes PAD_ID..UNK_ID below.
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(len(SPECIAL_TOKENS))

_METASPACE = "▁"


def _checked_texts(texts: Iterable[str]) -> Iterator[str]:
    """Yield the texts, failing early and clearly on an empty iterable or a non-string item."""
    if isinstance(texts, str):
        raise TypeError(
            "texts must be an iterable of sentences, got a single str; wrap it in a list: [text]."
        )
    iterator = iter(texts)
    first = next(iterator, None)
    if first is None:
        raise ValueError(
            "texts is empty: a BPE vocabulary needs training text. Pass the source and target "
            "sentences of the training split, e.g. itertools.chain(sources, targets)."
        )
    for index, text in enumerate(itertools.chain([first], iterator)):
        if not isinstance(text, str):
            raise TypeError(
                f"texts must yield str, item {index} is {type(text).__name__} ({text!r:.80}). "
                "Pass plain sentences, not token lists or dicts."
            )
        yield text


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8000,
    min_frequency: int = 2,
    model_max_length: int = 1024,
    show_progress: bool = False,
    size_is_a_ceiling: bool = False,
) -> PreTrainedTokenizerFast:
    """Learn one BPE vocabulary shared by source and target from `texts` (both sides, mixed).

    The special tokens have fixed ids: `<pad>`=0, `<s>`=1, `</s>`=2, `<unk>`=3. Every encoded
    sequence ends with `</s>` and has no `<s>`: the decoder starts from `<s>` as its
    `decoder_start_token_id` instead. The vocabulary can come out smaller than `vocab_size` when
    the text has fewer merges to offer; below half of it, a warning says so, unless `size_is_a_ceiling` says that
    the caller counts on `min_frequency` to size the vocabulary to the text.
    """
    check_int(
        "vocab_size",
        vocab_size,
        len(SPECIAL_TOKENS) + 1,
        f"It counts the {len(SPECIAL_TOKENS)} special tokens {list(SPECIAL_TOKENS)}; "
        "the paper used about 37000 for English-German.",
    )
    check_int("min_frequency", min_frequency, 1, "Use 1 to allow merges of pairs seen once.")
    check_int("model_max_length", model_max_length, 1, "It is the longest sequence the model accepts.")

    backend = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()])
    # "always" gives the first word its "▁" too, so a word has the same tokens wherever it stands.
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_METASPACE, prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=show_progress,
    )
    backend.train_from_iterator(_checked_texts(texts), trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        # Naming both makes transformers build the post-processor: "$A </s>", no "<s>".
        add_bos_token=False,
        add_eos_token=True,
        model_max_length=model_max_length,
        # The metaspace decoder already restores spaces; the cleanup would glue "a ." into "a.".
        clean_up_tokenization_spaces=False,
    )
    if size_is_a_ceiling:
        logger.info(
            "Trained a shared BPE vocabulary of %d tokens (at most %d, every merge seen at least %d times).",
            len(tokenizer), vocab_size, min_frequency,
        )  # fmt: skip
    elif len(tokenizer) < vocab_size / 2:
        logger.warning(
            "The BPE vocabulary has %d tokens, far fewer than the %d asked for: the text offers no more merges seen "
            "at least min_frequency=%d times. More text gives a larger vocabulary; a vocab_size of %d gives this one.",
            len(tokenizer), vocab_size, min_frequency, len(tokenizer),
        )  # fmt: skip
    else:
        logger.info("Trained a shared BPE vocabulary of %d tokens (asked for %d).", len(tokenizer), vocab_size)
    return tokenizer
