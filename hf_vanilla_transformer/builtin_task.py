"""The built-in task: English-like sentences ("en") translated into an invented language ("toy"), generated
from a seed, so that a model can be trained and tested in minutes without downloading anything.

The target language's words are made of syllables drawn from the seed. The source grammar:

    sentence := clause [conjunction clause]
    clause   := NP verb [NP] [preposition NP] [adverb]         (the verb agrees with the subject)
    NP       := (determiner | [determiner] number) adjective{0,2} noun ["that" verb [NP]]

The target is verb-final, mirrors the noun phrase (noun, adjectives in reverse, number,
determiner), turns prepositions into postpositions, marks subject and object with particles,
puts a relative clause after its noun in verb-final order, and adds suffixes for plural nouns
and for verbs with a plural subject. A validation pair for seed 0:

    en:  my chairs touch those pictures near their old busy soldier
    toy: mirpakfal tanur gu vioral evear bekpu zor zekres rehispufal von bal vebutinvik

("gu" marks the subject, "bal" the object, "-fal" a plural noun, "-vik" a plural subject.)
Each source sentence has exactly one translation, so a model can learn to translate it perfectly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from datasets import Dataset, DatasetDict, Features, Translation

from ._validation import check_int

SOURCE_LANG = "en"
TARGET_LANG = "toy"
# The layout of data.py's loaders and of the WMT datasets on the Hub: one "translation" column of {language: text}.
FEATURES = Features({"translation": Translation(languages=[SOURCE_LANG, TARGET_LANG])})

# Every surface form below belongs to one category only, so the source never has two readings.
_NOUNS = (
    "dog cat bird horse farmer teacher doctor student king queen girl boy friend neighbor baker "
    "painter sailor soldier writer singer river mountain forest garden house village city castle "
    "bridge road market school tower island ship boat wagon apple pie cake letter book song story "
    "picture window door table chair lamp key box bottle basket flower tree stone coin ring hat "
    "coat shoe cup plate candle clock map rope lion fox rabbit owl frog duck goat monkey pony lady "
    "church dish glass bench berry"
).split()
_ADJECTIVES = (
    "big small old young red blue green yellow white black happy sad tall short quiet loud brave "
    "clever lazy busy strong weak rich poor kind bright dark warm cold heavy soft hard new famous "
    "strange beautiful tiny hungry angry gentle proud wild"
).split()
_TRANSITIVE_VERBS = (
    "see find like love help follow watch carry push pull paint draw build open close wash visit "
    "greet chase catch hold buy sell bring take meet call teach know remember forget touch throw "
    "kick read hide fix miss"
).split()
_INTRANSITIVE_VERBS = (
    "sleep run dance laugh cry swim jump wait smile shout rest fall travel work arrive speak".split()
)
_ADVERBS = (
    "quickly slowly happily sadly quietly loudly carefully often always sometimes today again "
    "together early late now gladly bravely silently soon"
).split()
_PREPOSITIONS = "in on near behind under above beside with without from across through into around".split()
_SINGULAR_DETERMINERS = ("a", "this", "every", "each")
_PLURAL_DETERMINERS = ("these", "those", "many", "several", "some")
_SHARED_DETERMINERS = ("the", "my", "your", "his", "her", "our", "their", "no")
_NUMBER_DETERMINERS = ("the", "my", "your", "his", "her", "our", "their", "these", "those")
_NUMBERS = "two three four five six seven eight nine ten eleven twelve".split()
_CONJUNCTIONS = ("and", "but", "because", "while", "so")
_RELATIVE = "that"

_MAX_SOURCE_WORDS = 25

_ONSETS = ("", "p", "t", "k", "b", "d", "g", "m", "n", "l", "r", "s", "v", "f", "h", "z")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "", "n", "l", "r", "s", "k")


def _plural(word: str) -> str:
    """English -s/-es/-ies inflection, used for both plural nouns and third-person verbs."""
    if word.endswith(("s", "sh", "ch", "x", "z", "o")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


@dataclass(frozen=True)
class _Lexicon:
    """The invented target language: a word per source lemma plus its suffixes and particles."""

    words: dict[str, str]
    plural_suffix: str
    verb_plural_suffix: str
    subject_marker: str
    object_marker: str
    relative_marker: str


def _build_lexicon(rng: random.Random) -> _Lexicon:
    used: set[str] = set()

    def syllables(count: int) -> str:
        return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(count))

    def fresh(min_syllables: int, max_syllables: int, suffix: str = "") -> str:
        # A new word must differ from every earlier word and inflected form, so target words
        # never collide and the task stays unambiguous in both directions.
        while True:
            word = syllables(rng.randint(min_syllables, max_syllables))
            forms = {word, word + suffix}
            if not forms & used:
                used.update(forms)
                return word

    plural_suffix = fresh(1, 1)
    verb_plural_suffix = fresh(1, 1)
    subject_marker, object_marker, relative_marker = fresh(1, 1), fresh(1, 1), fresh(1, 1)
    words: dict[str, str] = {}
    for noun in _NOUNS:
        words[noun] = fresh(2, 3, plural_suffix)
    for verb in _TRANSITIVE_VERBS + _INTRANSITIVE_VERBS:
        words[verb] = fresh(2, 3, verb_plural_suffix)
    for word in _ADJECTIVES + _ADVERBS:
        words[word] = fresh(2, 3)
    determiners = dict.fromkeys(_SINGULAR_DETERMINERS + _PLURAL_DETERMINERS + _SHARED_DETERMINERS)
    for word in [*_PREPOSITIONS, *determiners, *_NUMBERS, *_CONJUNCTIONS]:
        words[word] = fresh(1, 2)
    return _Lexicon(words, plural_suffix, verb_plural_suffix, subject_marker, object_marker, relative_marker)


def _verb(rng: random.Random, lexicon: _Lexicon, plural_subject: bool, transitive: bool) -> tuple[str, str]:
    lemma = rng.choice(_TRANSITIVE_VERBS if transitive else _INTRANSITIVE_VERBS)
    if plural_subject:
        return lemma, lexicon.words[lemma] + lexicon.verb_plural_suffix
    return _plural(lemma), lexicon.words[lemma]


def _noun_phrase(
    rng: random.Random, lexicon: _Lexicon, allow_relative: bool
) -> tuple[list[str], list[str], bool]:
    """Return the source words, the target words and whether the phrase is plural."""
    noun = rng.choice(_NOUNS)
    number = None
    if rng.random() < 0.15:
        number, plural = rng.choice(_NUMBERS), True
        determiner = rng.choice(_NUMBER_DETERMINERS + (None,) * 3)
    else:
        plural = rng.random() < 0.3
        determiner = rng.choice(
            _SHARED_DETERMINERS + (_PLURAL_DETERMINERS if plural else _SINGULAR_DETERMINERS)
        )
    adjectives = rng.sample(_ADJECTIVES, k=rng.choices((0, 1, 2), weights=(55, 30, 15))[0])

    source = [word for word in (determiner, number, *adjectives) if word is not None]
    source.append(_plural(noun) if plural else noun)
    if determiner == "a" and source[1][0] in "aeiou":
        source[0] = "an"
    target = [lexicon.words[noun] + (lexicon.plural_suffix if plural else "")]
    target += [lexicon.words[word] for word in reversed(adjectives)]
    target += [lexicon.words[word] for word in (number, determiner) if word is not None]

    if allow_relative and rng.random() < 0.12:
        transitive = rng.random() < 0.6
        verb_source, verb_target = _verb(rng, lexicon, plural, transitive)
        source += [_RELATIVE, verb_source]
        target.append(lexicon.relative_marker)
        if transitive:
            object_source, object_target, _ = _noun_phrase(rng, lexicon, allow_relative=False)
            source += object_source
            target += [*object_target, lexicon.object_marker]
        target.append(verb_target)
    return source, target, plural


def _clause(rng: random.Random, lexicon: _Lexicon) -> tuple[list[str], list[str]]:
    subject_source, subject_target, plural = _noun_phrase(rng, lexicon, allow_relative=True)
    transitive = rng.random() < 0.65
    verb_source, verb_target = _verb(rng, lexicon, plural, transitive)
    source = [*subject_source, verb_source]
    target = [*subject_target, lexicon.subject_marker]
    object_target: list[str] = []
    if transitive:
        object_source, object_target, _ = _noun_phrase(rng, lexicon, allow_relative=True)
        source += object_source
        object_target = [*object_target, lexicon.object_marker]
    if rng.random() < 0.35:
        preposition = rng.choice(_PREPOSITIONS)
        place_source, place_target, _ = _noun_phrase(rng, lexicon, allow_relative=False)
        source += [preposition, *place_source]
        target += [*place_target, lexicon.words[preposition]]
    target += object_target
    if rng.random() < 0.3:
        adverb = rng.choice(_ADVERBS)
        source.append(adverb)
        target.append(lexicon.words[adverb])
    target.append(verb_target)
    return source, target


def _sentence_pair(rng: random.Random, lexicon: _Lexicon) -> tuple[str, str]:
    while True:
        source, target = _clause(rng, lexicon)
        if rng.random() < 0.25:
            conjunction = rng.choice(_CONJUNCTIONS)
            second_source, second_target = _clause(rng, lexicon)
            source += [conjunction, *second_source]
            target += [lexicon.words[conjunction], *second_target]
        if len(source) <= _MAX_SOURCE_WORDS:
            return " ".join(source), " ".join(target)


def load_builtin_dataset(
    seed: int = 0, train_size: int = 20000, validation_size: int = 500, test_size: int = 500
) -> DatasetDict:
    """Generate the built-in en -> toy task described in this module's docstring.

    The same seed gives the same lexicon and the same sentences. No source sentence occurs twice,
    so validation and test are disjoint from train and from each other; they are drawn first, so
    they stay the same when only `train_size` changes.
    """
    check_int("seed", seed, 0)
    check_int("train_size", train_size, 1)
    check_int("validation_size", validation_size, 0)
    check_int("test_size", test_size, 0)
    rng = random.Random(seed)
    lexicon = _build_lexicon(rng)
    wanted = validation_size + test_size + train_size
    pairs: dict[str, str] = {}
    attempts = 0
    while len(pairs) < wanted:
        attempts += 1
        if attempts > 100 * wanted:
            raise ValueError(f"Could not draw {wanted} distinct sentences; ask for fewer examples.")
        source, target = _sentence_pair(rng, lexicon)
        # A repeat with another translation would make the task ambiguous: a grammar bug.
        if pairs.setdefault(source, target) != target:
            raise RuntimeError(f"The built-in grammar gave two translations for {source!r}.")

    rows = [{SOURCE_LANG: source, TARGET_LANG: target} for source, target in pairs.items()]
    bounds = {
        "train": (validation_size + test_size, wanted),
        "validation": (0, validation_size),
        "test": (validation_size, validation_size + test_size),
    }
    return DatasetDict(
        {
            split: Dataset.from_dict({"translation": rows[start:end]}, features=FEATURES)
            for split, (start, end) in bounds.items()
        }
    )
