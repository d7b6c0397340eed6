"""The second-view augmentations of stage 1 (jtcse/training/augment.py) and their wiring into the objective."""

from __future__ import annotations

import random

import pytest

from jtcse.training.augment import augmenter, crop, word_deletion, word_repetition

SENTENCE = "a man is playing a large guitar on the stage tonight"


def test_word_deletion_keeps_an_ordered_subset_and_at_least_one_word():
    rng = random.Random(0)
    words = SENTENCE.split()
    for _ in range(50):
        out = word_deletion(SENTENCE, 0.3, rng).split()
        it = iter(words)
        assert all(w in it for w in out)  # a subsequence: order kept, nothing added
        assert 1 <= len(out) <= len(words)
    assert word_deletion("one", 0.99, rng) == "one"
    assert word_deletion(SENTENCE, 0.0, rng) == SENTENCE
    deleted = sum(len(words) - len(word_deletion(SENTENCE, 0.3, rng).split()) for _ in range(400))
    assert deleted / (400 * len(words)) == pytest.approx(0.3, abs=0.05)


def test_crop_keeps_one_contiguous_span_of_the_asked_length():
    rng = random.Random(1)
    words = SENTENCE.split()  # 11 words: rate 0.3 drops int(3.3) = 3 of them
    starts = set()
    for _ in range(100):
        out = crop(SENTENCE, 0.3, rng).split()
        assert len(out) == 8
        start = next(i for i in range(len(words)) if words[i : i + 8] == out)
        starts.add(start)
    assert starts == set(range(4))  # every possible span is drawn
    assert crop("solo", 0.9, rng) == "solo"


def test_word_repetition_only_doubles_words_in_place():
    rng = random.Random(2)
    words = SENTENCE.split()
    for _ in range(20):
        out, i = word_repetition(SENTENCE, 0.5, rng).split(), 0
        for word in words:  # each word appears once or twice in a row, in order, and nothing else appears
            assert out[i] == word
            i += 2 if i + 1 < len(out) and out[i + 1] == word else 1
        assert i == len(out)
    repeated = sum(len(word_repetition(SENTENCE, 0.5, rng).split()) - len(words) for _ in range(400))
    assert repeated / (400 * len(words)) == pytest.approx(0.5, abs=0.05)
    assert word_repetition(SENTENCE, 0.0, rng) == SENTENCE


def test_augmenter_draws_from_the_global_generator_so_a_reseeded_run_repeats_its_edits():
    edit = augmenter("word_deletion", 0.4)
    random.seed(5)
    first = [edit(SENTENCE) for _ in range(5)]
    random.seed(5)
    assert [edit(SENTENCE) for _ in range(5)] == first
    assert len(set(first)) > 1
    assert augmenter("none", 0.4) is None and augmenter("crop", 0.0) is None
    with pytest.raises(ValueError, match="augment must be one of"):
        augmenter("back_translation", 0.1)


def test_the_second_view_of_each_sentence_is_the_edited_one(tiny_bert):
    from jtcse.modeling.towers import load_tower
    from jtcse.training.objectives import SimCSEObjective

    tower, tokenizer = load_tower(str(tiny_bert))
    objective = SimCSEObjective(tower, tokenizer, max_length=24, second_view=lambda s: s.split()[0])
    batch = objective.views(["the cat sleeps", "stocks fell sharply"])
    texts = tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
    assert texts == ["the cat sleeps", "the", "stocks fell sharply", "stocks"]
