"""Offline text augmentations of a sentence's second view (``pretrain.tower_*.augment``).

The authors make their two towers differ by training each on a different round-trip translation of the corpus
(English-French-English, English-Russian-English). No translation model runs offline, so these word-level edits
stand in: each tower can see its positives through another edit, and the two towers then disagree where a
sentence's meaning does not depend on the edited words. Word repetition is ESimCSE's (Wu et al., 2022): it changes
the length of a positive without changing its meaning, so length stops being a shortcut.

Every function draws from the ``random.Random`` it is given; the trainer seeds Python's global generator and saves
its state in every checkpoint, so a resumed run draws the same edits as an uninterrupted one.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from types import ModuleType


def word_deletion(sentence: str, rate: float, rng: random.Random | ModuleType) -> str:
    """Drop each word with probability ``rate``; at least one word is kept."""
    words = sentence.split()
    kept = [w for w in words if rng.random() >= rate]
    return " ".join(kept) if kept else words[rng.randrange(len(words))] if words else sentence


def crop(sentence: str, rate: float, rng: random.Random | ModuleType) -> str:
    """Keep one random contiguous span of ``ceil((1 - rate) * n)`` of the n words (at least one)."""
    words = sentence.split()
    if not words:
        return sentence
    length = max(1, len(words) - int(rate * len(words)))
    start = rng.randrange(len(words) - length + 1)
    return " ".join(words[start : start + length])


def word_repetition(sentence: str, rate: float, rng: random.Random | ModuleType) -> str:
    """Repeat each word (in place) with probability ``rate``."""
    out = []
    for word in sentence.split():
        out.append(word)
        if rng.random() < rate:
            out.append(word)
    return " ".join(out) if out else sentence


AUGMENTERS: dict[str, Callable[[str, float, random.Random | ModuleType], str]] = {
    "word_deletion": word_deletion,
    "crop": crop,
    "word_repetition": word_repetition,
}


def augmenter(kind: str, rate: float) -> Callable[[str], str] | None:
    """The second-view edit of ``pretrain.tower_*.augment`` (None for 'none' or a zero rate), drawing from
    Python's global generator (seeded and checkpointed by the trainer)."""
    if kind == "none" or rate == 0:
        return None
    if kind not in AUGMENTERS:
        raise ValueError(f"augment must be one of none, {', '.join(AUGMENTERS)}, got {kind!r}")
    edit = AUGMENTERS[kind]
    # The random module's functions are its global generator's methods: the module itself is that generator.
    return lambda sentence: edit(sentence, rate, random)
