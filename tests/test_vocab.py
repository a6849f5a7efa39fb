"""vocab.py: text survives the tokenizer, any string encodes, and the vocabulary count stays bounded."""
import numpy as np
import pytest

import shapes
import vocab


@pytest.fixture(scope="module")
def world():
    return shapes.examples(300, seed=0)


def test_captions_round_trip_through_the_tokenizer(world):
    _, captions, _ = world
    tokenizer = vocab.build_tokenizer(captions)
    for caption in captions:
        ids = tokenizer.encode(caption)
        assert ids.shape == (16,) and ids.dtype == np.int32
        assert tokenizer.decode(ids) == caption
        assert (ids >= vocab.N_SPECIAL + vocab.N_BYTES).sum() == len(caption.split())  # one id per word


def test_any_string_encodes_and_padding_is_explicit(world):
    tokenizer = vocab.build_tokenizer(world[1], length=16)
    assert list(tokenizer.encode("")) == [vocab.PAD] * 16
    assert tokenizer.encode("x" * 10_000).shape == (16,)
    assert vocab.MASK not in tokenizer.encode("[MASK] [PAD] mask pad")  # text cannot forge special ids
    unknown = tokenizer.encode("a zebra in the café")
    assert tokenizer.decode(unknown) == "a zebra in the café"  # unknown words spelled in bytes
    ids = tokenizer.encode("a red circle")
    assert list(ids[3:]) == [vocab.PAD] * 13
    assert tokenizer.decode([vocab.MASK, vocab.PAD, *ids]) == "a red circle"
    assert isinstance(tokenizer.decode(np.arange(tokenizer.vocab_size)), str)  # any generation decodes


def test_the_vocabulary_count_is_bounded_and_keeps_the_frequent_words():
    rare = (f"w{i}" for i in range(5000))  # 5000 words seen once, far past 16 x max_words distinct ones
    texts = (f"red blue red {word}" if i % 2 else f"blue {word}" for i, word in enumerate(rare))
    tokenizer = vocab.build_tokenizer(texts, max_words=8)
    assert tokenizer.words[:2] == ("blue", "red") and len(tokenizer.words) == 8
