"""The demo backbone's WordPiece vocabulary, learned from the pretraining reports,
deterministically (lib/model/backbone.py writes it beside the BERT config)."""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Iterable

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4, [PAD] = 0


def pretokenize(texts: Iterable[str]) -> Counter[str]:
    """Word counts after BERT's normalisation (lowercase, accents stripped) and splitting."""
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    return counts


def train_wordpiece_vocab(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2
) -> dict[str, int]:
    """A BERT WordPiece vocabulary (token -> id) learned from ``texts``, deterministically.

    The algorithm is the one of ``tokenizers``' WordPieceTrainer (BPE merges over words split
    into a first character and ``##``-continuations, merged by pair frequency). That trainer
    breaks ties between equally frequent pairs in hash-map order, which changes from process to
    process, so it is reimplemented here with ties broken lexicographically: the same texts
    always give the same vocabulary. Ids: the special tokens 0..4, the alphabet, then merges in
    order. The vocabulary holds at least the specials and the alphabet, whatever vocab_size.
    """
    word_counts = pretokenize(texts)
    words = sorted(word_counts)  # fixed order: the merge loop below never depends on hashing
    counts = [word_counts[w] for w in words]
    symbols = [[w[0], *(f"##{c}" for c in w[1:])] for w in words]

    alphabet = sorted({c for w in words for c in w}) + sorted({s for sy in symbols for s in sy[1:]})
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *alphabet):
        vocab.setdefault(token, len(vocab))

    pair_counts: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for i, sy in enumerate(symbols):
        for pair in itertools.pairwise(sy):
            pair_counts[pair] += counts[i]
            where.setdefault(pair, set()).add(i)
    # Max-heap by count, then the lexicographically smallest pair; stale entries are skipped.
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)

    while heap and len(vocab) < vocab_size:
        neg_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg_count:
            continue
        if -neg_count < min_frequency:
            break
        first, second = pair
        merged = first + second[2:]  # the second symbol always continues a word: "##..."
        vocab.setdefault(merged, len(vocab))
        changed: set[tuple[str, str]] = set()
        for i in sorted(where.pop(pair, ())):
            old = symbols[i]
            for p in itertools.pairwise(old):
                pair_counts[p] -= counts[i]
                changed.add(p)
            new: list[str] = []
            j = 0
            while j < len(old):
                if j + 1 < len(old) and old[j] == first and old[j + 1] == second:
                    new.append(merged)
                    j += 2
                else:
                    new.append(old[j])
                    j += 1
            symbols[i] = new
            for p in itertools.pairwise(new):
                pair_counts[p] += counts[i]
                where.setdefault(p, set()).add(i)
                changed.add(p)
        for p in sorted(changed):
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
            else:
                del pair_counts[p]
                where.pop(p, None)
    return vocab
