"""The text tokenizer: words, with a byte fallback.

A word vocabulary built from the training text keeps captions short (8-12 tokens for the shapes world instead of
~40 bytes), so the model fills few text slots when it writes a caption; any word not in the vocabulary is spelled
out in UTF-8 bytes, so every string encodes, nothing needs downloading, and decoding gives back readable text. The
vocabulary is saved in the checkpoint header with the model. Read next: vqgan.py (pictures -> tokens).
"""
import dataclasses
import functools
import re
import sys
from dataclasses import dataclass

import numpy as np

PAD, MASK = 0, 1
N_SPECIAL, N_BYTES = 2, 256
WORD = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class Tokenizer:
    words: tuple[str, ...]  # the word vocabulary; ids N_SPECIAL + N_BYTES + i
    length: int = 16  # every text is truncated or padded with PAD to this many tokens
    caption_lengths: tuple[int, ...] = ()  # training captions of 1, 2, ..., length tokens: how many of each.
    #                                        Captioning needs it (sample.write_text); () = unknown

    @property
    def vocab_size(self):
        return N_SPECIAL + N_BYTES + len(self.words)

    @functools.cached_property
    def word_ids(self):  # built once: per call it cost ~1 ms a caption at 8192 words, 0.01 ms once cached
        return {w: N_SPECIAL + N_BYTES + i for i, w in enumerate(self.words)}

    def encode(self, text):
        """str -> int32 (length,): lower-cased words; unknown words as bytes; then PAD."""
        index = self.word_ids
        ids = []
        for word in WORD.findall(text.lower()):
            if word in index:
                ids.append(index[word])
            else:  # the space goes with the bytes, so that decoding keeps unknown words apart
                ids.extend(N_SPECIAL + b for b in (" " + word).encode("utf-8"))
        ids = ids[: self.length]
        return np.array(ids + [PAD] * (self.length - len(ids)), np.int32)

    def decode(self, ids):
        """int ids -> str; PAD and MASK are dropped."""
        out = bytearray()
        for i in (int(i) for i in ids):
            if i >= N_SPECIAL + N_BYTES and i < self.vocab_size:
                out += (" " + self.words[i - N_SPECIAL - N_BYTES]).encode("utf-8")
            elif i >= N_SPECIAL and i < N_SPECIAL + N_BYTES:
                out.append(i - N_SPECIAL)
        return out.decode("utf-8", "replace").strip()


def build_tokenizer(texts, length=16, max_words=8192):
    """The max_words most frequent words of texts (ties in first-seen order) as a Tokenizer.

    Streams texts with bounded memory: past 16 * max_words distinct words, the rarer half of the counts is
    dropped (the frequent words of a large corpus stay, a rare word's count restarts), first-seen order kept."""
    counts = {}
    for text in texts:
        for word in WORD.findall(text.lower()):
            counts[word] = counts.get(word, 0) + 1
        if len(counts) > 16 * max_words:
            keep = set(sorted(counts, key=lambda w: -counts[w])[:8 * max_words])
            counts = {w: c for w, c in counts.items() if w in keep}
    words = sorted(counts, key=lambda w: -counts[w])[:max_words]
    return Tokenizer(tuple(words), length)


def tokenizer_from_header(fields: dict) -> Tokenizer:
    """The Tokenizer saved in a checkpoint header (JSON turns its tuples into lists)."""
    return Tokenizer(tuple(fields["words"]), fields["length"], tuple(fields["caption_lengths"]))


def prompt_ids(tokenizer, prompt):
    """A prompt -> ids (length,), with a note on stderr for what the model will not see; None for no prompt, or an
    empty one (the pictures are then unconditional)."""
    if prompt is None or not prompt.strip():
        if prompt is not None:
            print("note: empty prompt, so the pictures are unconditional", file=sys.stderr)
        return None
    unknown = list(dict.fromkeys(w for w in WORD.findall(prompt.lower()) if w not in tokenizer.word_ids))
    if unknown:
        print(f"note: words the model never saw, spelled out in bytes: {' '.join(unknown[:10])}", file=sys.stderr)
    full = dataclasses.replace(tokenizer, length=len(prompt.encode("utf-8")) + 1).encode(prompt)
    if (full != PAD).sum() > tokenizer.length:
        print(f"note: the prompt is cut to its first {tokenizer.length} tokens", file=sys.stderr)
    return tokenizer.encode(prompt)
