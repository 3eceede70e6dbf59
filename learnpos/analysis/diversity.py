"""distinct-n (Li et al. 2016): distinct n-grams / all n-grams over a set of texts, on units
that exist in every script.

Text in scripts written with spaces is cut into words at whitespace. Scripts written without
them (Chinese, Japanese kana, Thai, Lao, Khmer, Myanmar) have no word boundaries in the
text, so every character of theirs is a unit of its own, as machine-translation scorers do
for Chinese (sacreBLEU's `zh` tokenizer separates each CJK character); a text mixing both,
"用 PyTorch 训练", gives 用, PyTorch, 训, 练. The unit used is reported with the figure.
"""

from __future__ import annotations

import re

# Blocks of scripts written without spaces between words, and their punctuation.
_SPACELESS = (
    "\u0e00-\u0eff"  # Thai, Lao
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u2e80-\u2fdf"  # CJK radicals
    "\u3000-\u303f"  # CJK symbols and punctuation
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3100-\u31ff"  # Bopomofo, Kanbun, Katakana extensions
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\ufe30-\ufe4f"  # CJK compatibility forms
    "\uff00-\uffef"  # half- and full-width forms (，。！？ in Chinese text)
    "\U00020000-\U0003134f"  # CJK extensions B..G
)
_UNIT = re.compile(f"[{_SPACELESS}]|[^\\s{_SPACELESS}]+")
_HAS_SPACELESS = re.compile(f"[{_SPACELESS}]")


def units(text: str) -> list[str]:
    """Words where the script has spaces, single characters where it has none."""
    return _UNIT.findall(text)


def unit_name(texts: list[str]) -> str:
    """What `units` cut `texts` into: "words", "characters" or "words+characters"."""
    spaceless = sum(bool(_HAS_SPACELESS.search(t)) for t in texts)
    spaced = sum(bool(re.search(f"[^\\s{_SPACELESS}]", t)) for t in texts)
    if spaceless and spaced:
        return "words+characters"
    return "characters" if spaceless else "words"


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / all n-grams of `units`, n-grams never crossing from one text to
    the next; 0.0 when no text has n units."""
    grams = []
    for text in texts:
        u = units(text)
        grams += [tuple(u[j:j + n]) for j in range(len(u) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
