"""The vocabulary's two ends, word and character tokenizers, and token_statistics (tokens per
sentence and the rate of <unk>), counted by hand on small texts."""

from __future__ import annotations

import pytest

import tfm_rs
from tfm_rs.data import TokenStatistics, token_statistics, train_tokenizer

SENTENCES = ["Ein Mann fährt mit dem Fahrrad.", "Ein Hund spielt im Schnee.", "A man rides a bike.",
             "A dog plays in the snow."]


def test_word_tokenizer_has_one_token_per_word_and_unknown_words_are_unk():
    tok = train_tokenizer([], 1000, kind="word", min_frequency=1, texts=SENTENCES)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    # Each distinct word, "." once, and the four specials.
    assert tok.vocab_size == 4 + len({w for s in SENTENCES for w in s.replace(".", " .").split()})
    for s in SENTENCES:
        assert len(tok.encode(s)) == len(s.replace(".", " .").split())
        assert tok.decode(tok.encode(s)) == s
    assert tok.encode("Ein Elefant.") == [tok.token_to_id("▁Ein"), tok.unk_id, tok.token_to_id(".")]


def test_word_tokenizer_keeps_the_most_frequent_words_within_vocab_size():
    tok = train_tokenizer([], 6, kind="word", min_frequency=1, texts=["a a a b b c"])
    assert tok.vocab_size == 6 and tok.encode("a b c") == [tok.token_to_id("▁a"), tok.token_to_id("▁b"), tok.unk_id]


def test_char_tokenizer_has_one_token_per_character_and_word_start():
    tok = train_tokenizer([], 1000, kind="char", min_frequency=1, texts=SENTENCES)
    alphabet = set("".join(SENTENCES).replace(" ", "")) | {"▁"}
    assert tok.vocab_size == 4 + len(alphabet)
    for s in SENTENCES:
        # "▁" replaces each space and marks the first word as well.
        assert tok.tokenize(s) == ["▁" if c == " " else c for c in " " + s]
        assert tok.decode(tok.encode(s)) == s


def test_char_tokenizer_vocab_size_caps_the_alphabet():
    tok = train_tokenizer([], 4 + 2, kind="char", min_frequency=1, texts=["aaaa bbb c"])
    # Two places beyond the specials: "a" (4) and "b" (3) stay; "▁" (3) ties with "b", so which one of
    # them goes is the trainer's choice, and "c" (1) is always out.
    assert tok.vocab_size == 6 and tok.encode("c")[-1] == tok.unk_id


def test_token_statistics_counts_tokens_and_unknowns():
    tok = train_tokenizer([], 1000, kind="word", min_frequency=1, texts=SENTENCES)
    stats = token_statistics(tok, ["Ein Mann.", "Ein Elefant spielt im Zoo."])
    # [Ein, Mann, .] and [Ein, <unk>, spielt, im, <unk>, .]
    assert stats == TokenStatistics(sentences=2, tokens=9, tokens_per_sentence=4.5, longest=6, unknown=2,
                                    unknown_rate=2 / 9)
    assert token_statistics(tok, SENTENCES).unknown == 0


def test_token_statistics_of_a_character_tokenizer_is_the_length_plus_one():
    tok = train_tokenizer([], 1000, kind="char", min_frequency=1, texts=SENTENCES)
    stats = token_statistics(tok, SENTENCES)
    assert stats.tokens == sum(len(s) + 1 for s in SENTENCES) and stats.unknown == 0
    assert stats.longest == max(len(s) + 1 for s in SENTENCES)


def test_token_statistics_needs_sentences():
    tok = train_tokenizer([], 1000, kind="word", min_frequency=1, texts=SENTENCES)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="no sentences"):
        token_statistics(tok, [])
