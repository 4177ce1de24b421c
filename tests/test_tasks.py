"""tfm_rs.tasks.numbers: spellings, split, encode/decode round trips."""

import pytest

from tfm_rs.tasks.numbers import (BOS, EOS, LANGUAGES, PAD, NumbersTask, format_digits, join_tokens, spell,
                                  spell_tokens, split_text)

KNOWN = {
    "en": {0: "zero", 1: "one", 11: "eleven", 17: "seventeen", 21: "twenty-one", 70: "seventy", 71: "seventy-one",
           80: "eighty", 81: "eighty-one", 99: "ninety-nine", 100: "one hundred", 101: "one hundred one",
           1000: "one thousand", 1001: "one thousand one",
           123456: "one hundred twenty-three thousand four hundred fifty-six",
           3452: "three thousand four hundred fifty-two", 40: "forty", 15: "fifteen"},
    "fr": {0: "zéro", 1: "un", 11: "onze", 17: "dix-sept", 21: "vingt et un", 70: "soixante-dix",
           71: "soixante et onze", 80: "quatre-vingts", 81: "quatre-vingt-un", 99: "quatre-vingt-dix-neuf",
           100: "cent", 101: "cent un", 1000: "mille", 1001: "mille un",
           123456: "cent vingt-trois mille quatre cent cinquante-six", 91: "quatre-vingt-onze",
           97: "quatre-vingt-dix-sept", 200: "deux cents", 201: "deux cent un", 80000: "quatre-vingt mille",
           200000: "deux cent mille", 21000: "vingt et un mille", 2000: "deux mille", 61: "soixante et un",
           72: "soixante-douze"},
    "de": {0: "null", 1: "eins", 11: "elf", 17: "siebzehn", 21: "einundzwanzig", 70: "siebzig",
           71: "einundsiebzig", 80: "achtzig", 81: "einundachtzig", 99: "neunundneunzig", 100: "einhundert",
           101: "einhunderteins", 1000: "eintausend", 1001: "eintausendeins",
           123456: "einhundertdreiundzwanzigtausendvierhundertsechsundfünfzig",
           3452: "dreitausendvierhundertzweiundfünfzig", 30: "dreißig", 16: "sechzehn", 60: "sechzig",
           201000: "zweihunderteintausend", 12: "zwölf"},
}


@pytest.mark.parametrize("lang", LANGUAGES)
def test_known_spellings(lang):
    for n, text in KNOWN[lang].items():
        assert spell(n, lang) == text, (lang, n)


def test_format_digits():
    assert format_digits(3452) == "3 452"
    assert format_digits(7) == "7"
    assert format_digits(999999) == "999 999"
    assert format_digits(100000) == "100 000"


@pytest.mark.parametrize("bad", [-1, 1_000_000])
def test_out_of_range(bad):
    with pytest.raises(ValueError):
        spell(bad)


def test_unknown_language():
    with pytest.raises(ValueError, match="unknown language"):
        spell(3, "xx")
    with pytest.raises(ValueError):
        NumbersTask("it")


@pytest.mark.parametrize("lang", LANGUAGES)
def test_split_text_inverts_join(lang):
    for n in list(range(0, 2000, 7)) + [123456, 999999, 201001, 71071, 80080, 21021]:
        toks = spell_tokens(n, lang)
        assert split_text(join_tokens(toks, lang), lang) == toks


@pytest.mark.parametrize("lang", LANGUAGES)
def test_task_split_and_round_trips(lang):
    task = NumbersTask(lang, num_train=3000, num_heldout=300, seed=5)
    train, held = set(task.train_numbers), set(task.heldout_numbers)
    assert len(train) == 3000 and len(held) == 300
    assert not train & held
    assert set(range(20)) <= train
    assert all(20 <= n <= 999_999 for n in held)
    # deterministic by seed, and the same numbers in every language
    again = NumbersTask("en", num_train=3000, num_heldout=300, seed=5)
    assert again.train_numbers == task.train_numbers and again.heldout_numbers == task.heldout_numbers
    other = NumbersTask(lang, num_train=3000, num_heldout=300, seed=6)
    assert other.heldout_numbers != task.heldout_numbers
    # vocabularies: small, fixed specials, no unknown pieces
    assert task.src_vocab.itos[:3] == ["<pad>", "<bos>", "<eos>"] and (PAD, BOS, EOS) == (0, 1, 2)
    assert task.tgt_vocab.itos[:3] == ["<pad>", "<bos>", "<eos>"]
    assert len(task.src_vocab) == 15 and len(task.tgt_vocab) <= 40
    src, tgt = task.pairs(task.heldout_numbers[:50] + [0, 1, 999_999])
    for n, s, t in zip(task.heldout_numbers[:50] + [0, 1, 999_999], src, tgt):
        assert min(s) > 3 and min(t) > 3  # no specials, no <unk>
        assert task.decode_source(s) == format_digits(n)
        assert task.decode_target(t) == task.spell(n)
        assert task.encode_target(task.spell(n)) == t
        assert task.encode_source(str(n)) == s == task.encode_source(format_digits(n))
        assert task.decode_target(t + [EOS, 5, 6]) == task.spell(n)  # stops at EOS
        assert len(t) <= task.max_target_len()


def test_encode_source_rejects_text():
    with pytest.raises(ValueError):
        NumbersTask("en", num_train=20, num_heldout=0).encode_source("12a")
