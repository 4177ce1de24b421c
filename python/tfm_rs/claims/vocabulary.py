"""Claim 16: the embedding table is vocabulary × width, which is why subword tokenizers are used.

The experiment trains tokenizers of one joint German+English vocabulary on Multi30k's training
set: character-level (one token per character), BPE at 500 to 16,000 tokens, and word-level (every
word seen at least twice). For each it measures, on the 1,000 test pairs (test_2016_flickr), the
tokens per sentence and the rate of ``<unk>`` (:func:`tfm_rs.data.token_statistics`), and counts
the embedding table of the same small translator (:mod:`tfm_rs.claims.translation`, width 128,
2+2 layers) built for that vocabulary. The default run also trains that translator for the same
time — 90 CPU-seconds, about 45 s of a free 2-core machine — with four of the vocabularies
(characters, BPE 1,000 and 4,000, words) and scores greedy test BLEU.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from tfm_rs.claims import translation as tr
from tfm_rs.claims.base import Claim, Outcome
from tfm_rs.data import token_statistics, train_tokenizer

WIDTH, LAYERS, SEED = 128, 2, 0
BPE_SIZES = (500, 1000, 2000, 4000, 8000, 16000)
TRAINED = ("char", "bpe 1000", "bpe 4000", "word")
# What "a subword vocabulary sits between the two ends" means here: sentences at most 1.5× as long
# as with words and at most half as long as with characters, a table at most half the word
# table, and at most a tenth of the words' unknown tokens.
LENGTH_VS_WORDS, LENGTH_VS_CHARS, TABLE_VS_WORDS, UNKNOWN_VS_WORDS = 1.5, 0.5, 0.5, 0.1
# An end of the range "wins" BLEU when it beats every trained subword vocabulary by more than this.
BLEU_MARGIN = 1.0
# Larger than any vocabulary of the corpus: the word tokenizer keeps every word seen twice.
ALL_WORDS = 10**6

Spec = Tuple[str, str, int]


def _specs() -> List[Spec]:
    return ([("char", "char", ALL_WORDS)] + [(f"bpe {v}", "bpe", v) for v in BPE_SIZES]
            + [("word", "word", ALL_WORDS)])


def measure(kind: str, size: int, data: tr.Multi30k) -> Tuple[Any, Dict[str, float]]:
    """The tokenizer ``kind``/``size`` trained on ``data.train`` and its figures."""
    tok = train_tokenizer([], size, kind=kind, texts=data.train[0] + data.train[1])
    src, tgt = (token_statistics(tok, side) for side in data.test)
    model = tr.build(tok.vocab_size, WIDTH, LAYERS, SEED, max_len=512)
    return tok, {"vocab_size": tok.vocab_size, "src_tokens": src.tokens_per_sentence,
                 "tgt_tokens": tgt.tokens_per_sentence, "longest": max(src.longest, tgt.longest),
                 "src_unknown": src.unknown_rate, "tgt_unknown": tgt.unknown_rate,
                 "embedding_parameters": tr.embedding_parameters(model), "parameters": model.num_parameters()}


def balanced(fig: Dict[str, float], word: Dict[str, float], char: Dict[str, float]) -> bool:
    """Whether a vocabulary sits between the two ends (see the thresholds above)."""
    length = fig["src_tokens"] + fig["tgt_tokens"]
    unknown = fig["src_unknown"] + fig["tgt_unknown"]
    return (length <= LENGTH_VS_WORDS * (word["src_tokens"] + word["tgt_tokens"])
            and length <= LENGTH_VS_CHARS * (char["src_tokens"] + char["tgt_tokens"])
            and fig["embedding_parameters"] <= TABLE_VS_WORDS * word["embedding_parameters"]
            and unknown <= UNKNOWN_VS_WORDS * (word["src_unknown"] + word["tgt_unknown"]))


def verdict_of(figs: Dict[str, Dict[str, float]], bleu: Dict[str, float]) -> Tuple[str, Dict[str, Any]]:
    """holds: every table is exactly V × d, some subword vocabulary sits between the ends and (when
    BLEU was measured) neither end beats the best subword vocabulary by more than BLEU_MARGIN;
    it depends: the same, but an end wins BLEU; wrong: otherwise."""
    exact = all(f["embedding_parameters"] == f["vocab_size"] * WIDTH for f in figs.values())
    between = [n for n, f in figs.items() if n.startswith("bpe") and balanced(f, figs["word"], figs["char"])]
    subword = max((b for n, b in bleu.items() if n.startswith("bpe")), default=None)
    end_wins = [n for n in ("char", "word") if n in bleu and subword is not None and bleu[n] > subword + BLEU_MARGIN]
    if exact and between and not end_wins:
        verdict = "holds"
    elif exact and between:
        verdict = "it depends"
    else:
        verdict = "wrong"
    return verdict, {"table_is_v_times_d": exact, "between_the_ends": between, "end_wins_bleu": end_wins}


def experiment(quick: bool) -> Outcome:
    data = tr.multi30k(train=5000, valid=200) if quick else tr.multi30k()
    seconds, warmup = 90.0, 30
    figs: Dict[str, Dict[str, float]] = {}
    bleu: Dict[str, float] = {}
    steps: Dict[str, int] = {}
    for name, kind, size in _specs():
        tok, figs[name] = measure(kind, size, data)
        if not quick and name in TRAINED:
            model = tr.build(tok.vocab_size, WIDTH, LAYERS, SEED, max_len=512)
            trainer = tr.trainer(model, tok, data, tr.encode(tok, data), SEED, warmup)
            tr.train_for(trainer, seconds)
            steps[name] = trainer.step
            bleu[name] = tr.greedy_bleu(model, tok, data.test)
    verdict, why = verdict_of(figs, bleu)
    word, char = figs["word"], figs["char"]

    def short(name: str) -> str:
        f = figs[name]
        share = f["embedding_parameters"] / f["parameters"]
        text = (f"{name}: V {f['vocab_size']:,}, {f['src_tokens']:.1f}/{f['tgt_tokens']:.1f} tokens per de/en "
                f"sentence, table {f['embedding_parameters'] / 1e6:.2f}M ({share:.0%} of the model)")
        if f["src_unknown"] + f["tgt_unknown"]:
            text += f", <unk> {f['src_unknown']:.2%}/{f['tgt_unknown']:.2%}"
        if name in bleu:
            text += f", BLEU {bleu[name]:.1f} ({steps[name]} steps)"
        return text

    shown = ["char", "bpe 1000", "bpe 4000", "bpe 16000", "word"]
    summary = (f"width {WIDTH}, tokenizers trained on {data.sizes()['train']:,} pairs, test_2016_flickr (1,000): "
               + "; ".join(short(n) for n in shown)
               + (f"; BLEU after {seconds:g} CPU-s of training each" if bleu else "; BLEU not trained in quick mode")
               + f"; between the ends: {', '.join(why['between_the_ends']) or 'none'}")

    names = list(figs)

    def draw(plt: Any) -> Any:
        panels = 3 if bleu else 2
        fig, axs = plt.subplots(1, panels, figsize=(5 * panels, 4))
        xs = [figs[n]["vocab_size"] for n in names]
        length = [(figs[n]["src_tokens"] + figs[n]["tgt_tokens"]) / 2 for n in names]
        axs[0].plot(xs, length, "o-")
        for n, x, y in zip(names, xs, length):
            axs[0].annotate(n, (x, y), fontsize=7, textcoords="offset points", xytext=(4, 4))
        axs[0].set(xscale="log", xlabel="vocabulary size (log scale)", ylabel="tokens per sentence (mean of de, en)",
                   title="sequence length")
        axs[1].plot(xs, [figs[n]["embedding_parameters"] / 1e6 for n in names], "o-", label="embedding table V × d")
        axs[1].plot(xs, [figs[n]["parameters"] / 1e6 for n in names], "s--", label="whole model")
        axs[1].set(xscale="log", yscale="log", xlabel="vocabulary size (log scale)",
                   ylabel="parameters (millions, log scale)", title=f"parameters at width {WIDTH}")
        axs[1].annotate(f"word-level: <unk> {word['src_unknown']:.1%} de, {word['tgt_unknown']:.1%} en",
                        (word["vocab_size"], word["embedding_parameters"] / 1e6), fontsize=7,
                        textcoords="offset points", xytext=(-150, -20))
        axs[1].legend(fontsize=7)
        if bleu:
            bx = [figs[n]["vocab_size"] for n in bleu]
            axs[2].plot(bx, list(bleu.values()), "o-")
            for n, x, y in zip(bleu, bx, bleu.values()):
                axs[2].annotate(f"{n} ({steps[n]} steps)", (x, y), fontsize=7, textcoords="offset points",
                                xytext=(4, 4))
            axs[2].set(xscale="log", xlabel="vocabulary size (log scale)", ylabel="test BLEU (greedy)",
                       title=f"BLEU after {seconds:g} CPU-s of training each")
        return fig

    figures = {"width": WIDTH, "layers": LAYERS, "data": data.sizes(), "tokenizers": figs, "bleu": bleu,
               "steps": steps, "train_cpu_seconds": seconds if bleu else 0, "char_length_vs_word":
               (char["src_tokens"] + char["tgt_tokens"]) / (word["src_tokens"] + word["tgt_tokens"]), **why}
    return Outcome(verdict, summary, figures, {"vocabulary": draw})


CLAIM = Claim(
    name="vocabulary-size",
    number=16,
    statement="The embedding table is vocabulary × width, which is why subword tokenizers are used.",
    expected="holds",
    reason="The table is exactly V × d, and the two ends of the range each pay for it in a different coin: "
           "word-level needs a table of ~15k rows for Multi30k (two thirds of a small model's parameters), an "
           "output softmax as wide, which halves the steps a time budget buys, and still meets unknown words in "
           "the test set; character-level has a table of ~100 rows but sentences about five times longer. A few "
           "thousand BPE tokens give sentences about 1.3 times as long as words with a quarter of the table and no "
           "unknown tokens, and at equal training time they reach the best BLEU of the range.",
    experiment=experiment,
    not_measured=("BLEU in quick mode (it measures lengths, tables and unknown rates only)",
                  "long training (BLEU after 90 CPU-seconds per vocabulary, one seed)",
                  "the output softmax's cost per token, which grows with V too",
                  "other languages and larger corpora, where the word vocabulary is far larger"),
)
