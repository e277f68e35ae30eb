"""lib/model/vocab.py: the demo backbone's WordPiece vocabulary."""

from __future__ import annotations

from lib.model.vocab import SPECIAL_TOKENS, pretokenize, train_wordpiece_vocab
from tests.model.test_backbone import TEXTS


def test_wordpiece_vocab_is_deterministic_and_reconstructs_words():
    vocab = train_wordpiece_vocab(TEXTS, vocab_size=60)
    assert train_wordpiece_vocab(list(reversed(TEXTS)), vocab_size=60) == vocab
    assert list(vocab)[:5] == list(SPECIAL_TOKENS)
    assert sorted(vocab.values()) == list(range(len(vocab)))
    # Every character is there, so every training word splits into known pieces.
    chars = {c for w in pretokenize(TEXTS) for c in w}
    assert chars <= set(vocab)
    big = train_wordpiece_vocab(TEXTS, vocab_size=10_000, min_frequency=1)
    assert set(pretokenize(TEXTS)) <= set(big)  # enough merges learn every word


# --- timm names --------------------------------------------------------------------------
