"""Texts the tokenizer tests share: the torture list, and readers of the real SST-2 and IMDB files."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

TORTURE = [
    # accents and combining marks, precomposed and decomposed, and case that maps to two characters
    "Crème brûlée, naïve café, Ångström, Dvořák, São Paulo", "e\u0301te\u0301 CAFE\u0301", "İstanbul ΟΔΟΣ σοφός ς",
    "Straße MASSE ﬁne ﬀ", "Ǆemal ǅ ǆ", "a\u0300\u0301\u0302\u0303\u0304b", "\u0301\u0301start", "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇",
    # CJK, Korean, Japanese, Arabic, Hebrew, Thai, Devanagari, Cyrillic
    "北京欢迎你！中文分词测试。", "𠀋𡈁𪚲 (extension B)", "한국어 문장입니다. 안녕하세요", "ᄀ ᄁ 한글",
    "ひらがな カタカナ ｶﾀｶﾅ 日本語の文",
    "مرحبا بالعالم، كيف حالك؟", "שלום עולם! מה שלומך?", "สวัสดีครับ ภาษาไทย", "नमस्ते दुनिया", "Привет, МИР! Ёлка",
    # emoji: skin tones, ZWJ families, flags, keycaps, variation selectors
    "👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷 1️⃣ ❤️ ☺︎ 🥲🫠", "I love it😍😍so much!!!", "emoji🙂in🙂words",
    # invisible and odd spaces
    "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom", "non\u00a0breaking\u202fnarrow\u3000ideographic\u2003em",
    "line\u2028separator\u2029paragraph\u0085next", "tab\tnew\nline\rcarriage\x0bvt\x0cff",
    # control characters, NUL, replacement character, private use, unassigned, lone surrogate-free astral
    "ctrl\x00nul\x01soh\x1besc\x7fdel\x9fapc", "replace\ufffdment \ue000private \U000f0000 \u0378unassigned",
    "bidi\u202eoverride\u202c \u2066isolate\u2069 soft\u00adhyphen",
    # words of 99, 100 and 101 characters, and a long word with punctuation inside
    "a" * 99, "b" * 100, "c" * 101, "x" * 101 + "." + "y" * 5, "é" * 101, "##" * 60,
    # empty and whitespace only
    "", " ", "   \t\n  ", "\u200b", "\x00\x01",
    # special tokens inside text, glued, lower-cased, repeated, partial
    "[CLS] hello [SEP] world [PAD] [MASK] [UNK]", "a[MASK]b[SEP][SEP]c", "[mask] [Mask] [MASK", "[[MASK]]",
    "[UNK][UNK]", "x [SEP]", "##ing ##s", "[CLS]",
    # punctuation runs and symbols
    "Wait... what?!?! (really) [no] {yes} <maybe>", "--- *** ### $$$ %%% &&& ^^^ ~~~ ``` '''",
    "“smart” ‘quotes’ «guillemets» „low“",
    "a—b–c‐d ‒ e… f· g•h ¿¡ Olé! ¶ §", "http://example.com/a?b=c&d=e#f email@x.org", "3.14159 1,000,000 $12.50 50% #1",
    "don't can't won't I'm you're it's y'all o'clock", "l33t sp34k", "™ © ® ° ± × ÷ € £ ¥ ¢",
    "MiXeD CaSe WoRdS", "ⅫⅣ ① ② ¹²³ ½ ¼", "ℌ𝔢𝔩𝔩𝔬 𝐛𝐨𝐥𝐝 𝘪𝘵𝘢𝘭𝘪𝘤", "Ｆｕｌｌｗｉｄｔｈ　ＡＢＣ", "Ω Ω K K Å Å",
]


def read_sst2(path: Path) -> list[str]:
    # quoting off: sentences contain lone '"' characters that are text, not quotes
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row[0] for row in rows[1:]]


def read_imdb(path: Path, limit: int | None = None) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        return [row[0] for i, row in zip(range(limit or sys.maxsize), reader)]
