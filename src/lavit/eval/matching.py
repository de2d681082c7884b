"""Answer matching: option letters, numbers, yes/no, closed word classes and normalised free text.

`rule_verdict(prediction, truth)` returns a three-way verdict: True / False where a rule is certain, None
where it is not (free text: paraphrases, sentences) — the teacher filter then asks a judge model
(`lavit.eval.judge`). Numbers are read in digits, words ('twenty-one', 'a hundred and five') and fractions
('1/2', 'one half', '½'); one stated as a bound or a guess ('at least 3', 'about 5', '5+', 'maybe 3'), or with
a multiplier or fraction that the other side lacks ('3 thousand' for '3', '4/5' for '4'), defers.
`answers_match(prediction, truth) -> bool` is the rules' certain match (a deferred pair is no match);
evaluation and the toy world use it. A different matcher can be plugged in by name ('default', 'exact') or as
'package.module:function' taking (prediction, truth) and returning True, False or None.
"""

from __future__ import annotations

import importlib
import math
import re
import string
from collections.abc import Callable
from dataclasses import dataclass

NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
# Number words the rules do not read: a prediction holding one may state the truth in words ('a couple').
_OTHER_NUMBER_WORDS = re.compile(r"\b(?:hundreds?|thousands?|millions?|billions?|dozens?|couple|pair|half|halves|"
                                 r"quarters?|twice|double|triple|several|few)\b")
ARTICLES = {"a", "an", "the"}
_PUNCT = str.maketrans({c: " " for c in string.punctuation if c not in ".-"})
_LETTER_ONLY = re.compile(r"^\s*\(?\s*([A-Za-z])\s*\)?\s*[.:)]?\s*$")
TRUTH_LETTERS = "ABCDEFGH"

# Closed word classes: a truth that is one of them is decided by which members the prediction names.
# Only basic colour terms: 'navy' or 'crimson' may or may not be 'blue'/'red', so they defer.
WORD_CLASSES = {
    "colour": {"red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray"},
    "shape": {"circle", "square", "triangle", "rectangle", "oval", "pentagon", "hexagon", "octagon"},
}
_SYNONYMS = {"grey": "gray", "circles": "circle", "squares": "square", "triangles": "triangle",
             "rectangles": "rectangle", "ovals": "oval"}
_SHADES = re.compile(r"\b(?:navy|crimson|scarlet|maroon|burgundy|beige|tan|teal|turquoise|cyan|magenta|violet|"
                     r"lavender|lilac|indigo|gold|golden|silver|bronze|cream|ivory|khaki|olive|peach|coral|"
                     r"salmon|aqua|mauve|amber|charcoal|round|rectangular|square-shaped|circular|triangular)\b")
_NEGATORS = {"not", "no", "never", "neither", "nor", "without"}

# A prediction that gives no answer (a text-only model without the image often says so).
_REFUSAL = re.compile(
    r"\b(?:can ?not|unable to|not able to|impossible to|not possible to|hard to|difficult to)\s+(?:be\s+)?"
    r"(?:determine[d]?|tell|see|say|answer|know|identify|provide|view|access)\b|\bnot sure\b|\bunsure\b|"
    r"\bunclear\b|\bdo not know\b|\bno idea\b|\bno image\b|"
    r"\bwithout (?:seeing |viewing |access to )?(?:the |an )?image\b|\bnot (?:visible|provided|shown)\b")
_YES_NO_BOTH = re.compile(r"\b(?:yes\s*(?:and|or|/)\s*no|no\s*(?:and|or|/)\s*yes)\b")
# words that, instead of a leading yes/no, make the output a hedge
_YES_NO_HEDGE = re.compile(r"\b(?:maybe|perhaps|possibly|probably|likely|it depends|depends on|partially|partly|"
                           r"sort of|kind of|somewhat|both)\b")
# 'the answer is yes', 'I think no': a leading frame before the committed word
_YES_NO_LEAD = re.compile(r"^\W*(?:(?:the |my )?(?:final )?answer(?: is)?\W*|i (?:think|believe|would say)\W*)?"
                          r"(yes|no)\b(.*)$", re.S)
# 'No' is a commitment only before punctuation, the end, or a pronoun; 'No cars are visible' is a determiner.
_NO_COMMITS = re.compile(r"^\s*(?:[,.!;:)]|$|(?:it|there|they|he|she|this|that|i|we|you|not)\b)")
# '... is X' frames around a short answer: 'It is a dog.' says 'dog'
_FRAME = re.compile(r"^(?:(?:final )?answer(?: is)?|it is|it s|this is|that is|they are|these are|there is|"
                    r"there are|i see|i think it is|i think|image shows|picture shows|it looks like|"
                    r"it appears to be)\s+")


@dataclass(frozen=True)
class Verdict:
    """A rule decision: `match` True/False when certain, None when the rules defer; `rule` names which rule."""

    match: bool | None
    rule: str


def _expand_contractions(text: str) -> str:
    text = re.sub(r"\bcan['’]t\b|\bcannot\b", "can not", text, flags=re.I)
    text = re.sub(r"\bwon['’]t\b", "will not", text, flags=re.I)
    return re.sub(r"n['’]t\b", " not", text, flags=re.I)  # isn't → is not


def normalize_answer(text: str) -> str:
    """Lowercase, expand n't, drop punctuation and articles, number words → digits, collapse spaces."""
    text = _expand_contractions(text).lower().translate(_PUNCT)
    words = []
    for w in text.split():
        w = w.strip(".").rstrip("-")
        if w.startswith("-") and not w[1:2].isdigit():
            w = w.lstrip("-")
        if not w or w in ARTICLES:
            continue
        words.append(NUMBER_WORDS.get(w, w))
    return " ".join(words)


# ---- option letters -------------------------------------------------------------------------------------------

# Words after a leading 'A' that make it a letter ('A is correct', 'A or B'); any other word makes it the article.
_AFTER_LETTER_A = r"(?:is|was|would|seems|should|because|since|as|or|and|nor)\b"


def _is_article(text: str, end: int) -> bool:
    """'A' at `end` is the article when a word follows on the same line: 'A dog', 'A red car', 'A man.'."""
    return re.match(rf"[ \t]+(?!{_AFTER_LETTER_A})[A-Za-z]", text[end:], re.I) is not None


def _mask_negated(text: str, cls: str) -> tuple[str, set[str]]:
    """Blank out options the output rejects ('A is not correct', 'not B'); a negated option is no commitment."""
    negated: set[str] = set()
    patterns = [
        rf"\(?(?<![\w'])([{cls}])\)?\s+(?:is\s+(?:not|wrong|incorrect|false)|isn['’]t|can(?:not|['’]t)\s+be)\b",
        rf"(?i:\bnot)\s+(?:(?i:option|choice)\s+)?\(?([{cls}])\b\)?",
    ]
    for pattern in patterns:
        for m in re.finditer(pattern, text):
            negated.add(m.group(1))
        text = re.sub(pattern, lambda m: " " * len(m.group(0)), text)
    return text, negated


def _letter_commitment(text: str, letters: str) -> tuple[str | None, str]:
    """(letter, 'letter') for a committed option, else (None, 'hedge' | 'negated' | 'none')."""
    allowed = set(letters.upper())
    text = text.replace("*", "").strip()  # markdown bold: **B**
    whole = _LETTER_ONLY.match(text)
    if whole and whole.group(1).upper() in allowed:
        return whole.group(1).upper(), "letter"
    cls = "".join(sorted(allowed))
    low = cls.lower()
    text, negated = _mask_negated(text, cls)
    answer_key = r"(?i:answer)\s*(?i:is|:|would be|should be)?\s*[:\-]?\s*(?i:option\s*)?"
    option_key = r"(?i:option|choice|letter)\s*(?i:is|:)?\s*[:\-]?\s*"
    # (pattern, whether a bare 'A' there may be the article); most explicit first: 'the answer is B' beats an
    # earlier 'option A is wrong'
    patterns = [
        (rf"{answer_key}\(\s*([{cls}{low}])\s*\)", False),  # 'answer is (b)'
        (rf"{answer_key}\b([{cls}])\b", True),  # 'Answer: A', 'the correct answer is B'
        (rf"{answer_key}\b([{low}])(?=[.,;)]|\s*$)", False),  # 'answer: b' — but not 'the answer is a dog'
        (rf"{option_key}\(?\s*([{cls}])\b", False),  # 'Option B', 'choice (C)', 'the letter A'
        (rf"^\(\s*([{cls}{low}])\s*\)", False),  # '(a) yes'
        (rf"^([{cls}])(?=[.,:;)]|\s|$)", True),  # 'B. red', 'A, because', 'A) red' — not 'A dog'
        (rf"(?<![\w'])([{cls}])\s+(?i:is)\b", False),  # 'A is not correct, B is.' after masking: 'B is'
        (rf"\b(?i:it['’]?s|it is|that['’]?s|that is)\s+\(?([{cls}])\b", True),  # "it's B"
    ]
    hedge = rf"\)?\s*(?:or|and|/)\s*\(?\s*[{cls}{low}]\b"  # 'A or B', '(A) and (B)'
    found = {m.upper() for m in re.findall(rf"\(\s*([{cls}{low}])\s*\)", text)}
    for i, (pattern, article_possible) in enumerate(patterns):
        if i == 4 and len(found) > 1:  # '(A) or (B)' lists options rather than choosing one
            continue
        for match in re.finditer(pattern, text):
            if article_possible and match.group(1) == "A" and _is_article(text, match.end(1)):
                continue
            if re.match(hedge, text[match.end(1):]):
                return None, "hedge"  # no single commitment
            return match.group(1).upper(), "letter"
    if len(found) == 1:
        return found.pop(), "letter"
    return None, "hedge" if len(found) > 1 else ("negated" if negated else "none")


def extract_option_letter(text: str, letters: str = "ABCDE") -> str | None:
    """The option letter a model output commits to, or None.

    Accepts 'A', '(A)', 'A.', 'A)', '(a)', 'Answer: A', 'The correct answer is (B).', 'Option C', 'The letter A',
    'B. red', '(B) blue', 'A is not correct, B is.' (→ B). The article is never an option: 'A dog is sitting',
    'A red car', 'A man.'; a bare lowercase 'a' is a letter only when it is the whole output or parenthesised.
    Hedges ('A or B') and outputs that only reject options ('A is wrong.') commit to nothing.
    """
    return _letter_commitment(text, letters)[0]


# ---- numbers --------------------------------------------------------------------------------------------------

# Spelled numbers are rewritten as digits before any number is read, so 'twenty-one' and '21' take one path.
_UNITS = "one two three four five six seven eight nine".split()
_TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_WORD_VALUES = {"zero": 0, **{w: i for i, w in enumerate(_UNITS, 1)}, **{w: i for i, w in enumerate(_TEENS, 10)},
                **{w: 10 * i for i, w in enumerate(_TENS, 2)}}
# Words that multiply the number before them; '3 thousand' keeps its word, since a truth '3' may count thousands.
_MULTIPLIERS = {"hundred": 100, "dozen": 12, "thousand": 1e3, "million": 1e6, "billion": 1e9}
_ABBREVIATED = {"k": "thousand", "K": "thousand", "M": "million", "bn": "billion"}  # '5k', '2M'
_DENOMINATORS = {"half": 2, "halves": 2, "third": 3, "thirds": 3, "quarter": 4, "quarters": 4, "fourth": 4,
                 "fourths": 4}
_VULGAR = {"½": "1/2", "⅓": "1/3", "⅔": "2/3", "¼": "1/4", "¾": "3/4"}


def _one_of(words) -> str:
    return "(?:" + "|".join(sorted(words, key=len, reverse=True)) + r")\b"


_JOIN = r"(?: +|-)"  # 'twenty-one', 'twenty one'
_BELOW_100 = rf"(?:{_one_of(_TENS)}(?:{_JOIN}{_one_of(_UNITS)})?|{_one_of(_TEENS + _UNITS)})"
_AND = rf"{_JOIN}(?:and{_JOIN})?"  # 'a hundred and five', 'a hundred five'
_BELOW_1000 = rf"(?:(?:{_one_of(_UNITS)}|an?\b){_JOIN}hundred\b(?:{_AND}{_BELOW_100})?|{_BELOW_100})"
_MULTIPLIED = rf"(?:{_BELOW_1000}|an?\b){_JOIN}{_one_of(['dozen', 'thousand', 'million', 'billion'])}"
# One spelled number: 'seven', 'twenty-one', 'a hundred and five', 'three thousand', 'two million five hundred'
_SPELLED = re.compile(rf"\b(?:{_MULTIPLIED}(?:{_AND}{_MULTIPLIED})*(?:{_AND}{_BELOW_1000})?|{_BELOW_1000}|zero\b)",
                      re.I)
_SPELLED_FRACTION = re.compile(rf"\b({_one_of(_UNITS)}|an?\b){_JOIN}({_one_of(_DENOMINATORS)})", re.I)
# 'one' after these is a pronoun: 'the one on the left', 'no one'
_PRONOUN_ONE = re.compile(r"\b(?:the|this|that|no|any|each|every|which|other|another)\s+one\b", re.I)

_NUMBER = re.compile(
    r"(?<![\w.,/])(?P<neg>[-−])?[$€£¥]?"
    r"(?:(?:(?P<whole>\d+) )?(?P<num>\d+)/(?P<den>0*[1-9]\d*)(?![/\d])|"  # '1/2', '2 1/2'; not a date '3/4/2020'
    r"(?P<val>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d{1,3}(?:[\u00a0\u202f\u2009]\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+))"
    r"(?:\s?(?P<word>(?i:hundred|dozen|thousand|million|billion))s?\b|(?P<abbr>k|K|M|bn)(?![\w/]))?"
    r"(?:(?P<pct>\s?%|\s(?:percent|per cent)\b)|(?![\w/]|,\d))")  # '1,5' may be 1.5 or 1 and 5: no number
# '1 000' as the whole answer groups thousands; inside a sentence '3 000' may be 3 and 0
_PLAIN_SPACED = re.compile(r"^\s*[-−]?[$€£¥]?\d{1,3}(?: \d{3})+(?:\.\d+)?\s*%?\s*$")
_NUMBER_HEDGE = re.compile(r"\d\s*(?:or|to|–|-)\s*[-−$€£¥]?\d")
_SPACED_GROUPS = re.compile(r"\d \d{3}(?!\d)")
# A number stated as a bound or an estimate is not the value: 'less than 5', 'about 5', '5+', '5 or more'.
_BOUND_BEFORE = re.compile(
    r"(?:\b(?:(?:less|fewer|more|greater|larger|bigger|smaller|higher|lower)\s+than|at\s+(?:least|most)|up\s+to|"
    r"over|under|above|below|about|around|approx(?:imately|\.)?|roughly|nearly|almost|circa|some|close\s+to|"
    r"upwards\s+of|as\s+(?:many|much|few|little)\s+as|between|not|half|twice|double|triple)|[~≈<>≤≥±]=?)\s*$",
    re.I)
_BOUND_AFTER = re.compile(r"\s*(?:\+(?!\s*\d)|(?:or|and)\s+(?:more|less|fewer|so|above|below|over|under|up)\b|"
                          r"plus\b|-?ish\b|-odd\b|at\s+(?:least|most)\b|max(?:imum)?\b|minimum\b)", re.I)
# Hedges anywhere in the answer make its number a guess: 'There are probably 3 dogs.'
_ESTIMATE = re.compile(r"\b(?:maybe|perhaps|possibly|probably|likely|guess|estimated?)\b", re.I)


@dataclass(frozen=True)
class _Number:
    value: float
    percent: bool = False
    notation: str | None = None  # what turned the digits into the value: a multiplier word, or '/' for a fraction
    bound: str = ""  # the words that make it a bound or an estimate ('at least', '+', '~'); '' when stated as is


def _spelled_value(phrase: str) -> float:
    total = group = 0  # 'two million five hundred': total 2e6, then the group 500
    for word in re.split(r"[\s-]+", phrase.lower()):
        if word == "hundred":
            group = (group or 1) * 100
        elif word in _MULTIPLIERS:
            total, group = total + (group or 1) * _MULTIPLIERS[word], 0
        else:
            group += _WORD_VALUES.get(word, 0)  # 'and', 'a' add nothing
    return total + group


def _digits(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


def _spelled_as_digits(match: re.Match) -> str:
    """'twenty-one' → '21', 'one hundred and five' → '105'; 'three thousand' → '3 thousand' keeps its multiplier."""
    phrase = match.group()
    last = re.split(r"[\s-]+", phrase.lower())[-1]
    value = _spelled_value(phrase)
    return f"{_digits(value / _MULTIPLIERS[last])} {last}" if last in _MULTIPLIERS else _digits(value)


def _fraction_as_digits(match: re.Match) -> str:
    """'one half' → '1/2', 'three quarters' → '3/4', 'a quarter' → '1/4'."""
    numerator, denominator = match.group(1).lower(), match.group(2).lower()
    if numerator in ("a", "an") and denominator.startswith(("third", "fourth")):
        return match.group()  # 'a third dog' is an ordinal
    return f"{_WORD_VALUES.get(numerator, 1)}/{_DENOMINATORS[denominator]}"


def _number_text(text: str) -> str:
    """`text` with its numbers in digits: 'minus twenty-one' → '-21', 'one half' → '1/2', '2½' → '2 1/2'."""
    text = _PRONOUN_ONE.sub(lambda m: m.group()[:-3] + "_", text)
    text = _SPELLED_FRACTION.sub(_fraction_as_digits, text)
    text = _SPELLED.sub(_spelled_as_digits, text)
    text = re.sub("[½⅓⅔¼¾]", lambda m: " " + _VULGAR[m.group()], text)
    text = re.sub(r"\b(?:minus|negative)\s+(?=[$€£¥]?\d)", "-", text, flags=re.I)
    return text.replace(" ", "") if _PLAIN_SPACED.match(text) else text


def _bound(text: str, match: re.Match) -> str:
    """The words around a number that make it a bound or an estimate, lowercased; '' when there are none."""
    before = _BOUND_BEFORE.search(text, max(0, match.start() - 40), match.start())  # a bound's words are short
    after = _BOUND_AFTER.match(text, match.end())
    words = " ".join(m.group() for m in (before, after) if m)
    return " ".join(words.lower().split())


def _read_number(text: str, match: re.Match) -> _Number:
    if match.group("den"):
        value = int(match.group("whole") or 0) + int(match.group("num")) / int(match.group("den"))
        notation = "/"
    else:
        value, notation = float(re.sub(r"[,\u00a0\u202f\u2009]", "", match.group("val"))), None
    word = (match.group("word") or "").lower() or _ABBREVIATED.get(match.group("abbr"))
    if word:
        value, notation = value * _MULTIPLIERS[word], word
    return _Number(-value if match.group("neg") else value, match.group("pct") is not None, notation,
                   _bound(text, match))


def _numbers(digit_text: str) -> list[_Number]:
    """The numbers in a text already put through `_number_text`."""
    return [_read_number(digit_text, m) for m in _NUMBER.finditer(digit_text)]


def _pure_number(text: str) -> _Number | None:
    """The number a truth consists of ('3', '1,000', '$5', '8%', 'three', '1/2', '3 thousand'), or None."""
    digit_text = _number_text(text)
    numbers = _numbers(digit_text)
    rest = _NUMBER.sub(" ", digit_text)
    return numbers[0] if len(numbers) == 1 and not re.sub(r"[\s.]", "", rest) else None


def _bounds(text: str) -> list[str]:
    return [n.bound for n in _numbers(_number_text(text))]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _number_match(number: _Number, truth: _Number) -> bool | None:
    """True for equal values, False for certainly different ones, None where a notation makes them incomparable."""
    if _close(number.value, truth.value):
        return True  # '8%' vs '8', '$5' vs '5', '3.0' vs '3', '1/2' vs '0.5', '3 thousand' vs '3000'
    if number.percent != truth.percent:  # '8%' vs '0.08'
        pct, plain = (number, truth) if number.percent else (truth, number)
        if _close(pct.value / 100, plain.value):
            return True
    if number.notation != truth.notation:
        return None  # '3 thousand' for '3' (the truth may count thousands), '4/5' for '4' (a score)
    return False


def _number_verdict(prediction: str, truth: _Number) -> Verdict:
    text = _expand_contractions(prediction)
    key = list(re.finditer(r"(?i)\banswer\s*(?:is|:)", text))
    if key:  # 'I count 2 dogs and 3 cats; the answer is 3'
        text = text[key[-1].end():]
    digit_text = _number_text(text)
    if _NUMBER_HEDGE.search(digit_text):
        return Verdict(False, "hedge")  # '3 or 4', '3-4' commit to no single number
    if _SPACED_GROUPS.search(text) and not _PLAIN_SPACED.match(text):
        return Verdict(None, "number_grouping")
    numbers = _numbers(digit_text)
    if not numbers:
        return Verdict(False, "refusal") if _REFUSAL.search(text.lower()) else Verdict(None, "number_absent")
    if any(n.bound for n in numbers) or _ESTIMATE.search(digit_text):
        return Verdict(None, "number_qualified")  # 'at least 3', 'about 5', 'maybe 3' may or may not be right
    matches = {_number_match(n, truth) for n in numbers}
    if matches == {True}:
        return Verdict(True, "number")
    if len(set(numbers)) > 1:
        return Verdict(None, "numbers_several")  # '3 of the 4 cats' (which answers?), '2 dogs and 4 cats' for 6
    if None in matches:
        return Verdict(None, "number_notation")  # '3 thousand' for '3', '4/5' for '4'
    if _OTHER_NUMBER_WORDS.search(_NUMBER.sub(" ", digit_text).lower()):  # unread: 'a couple', not '3 thousand'
        return Verdict(None, "number_words")
    return Verdict(False, "number")


# ---- yes / no -------------------------------------------------------------------------------------------------

def _yes_no_commitment(text: str) -> tuple[str | None, str]:
    """('yes' | 'no' | None, the rest of the output after the committed word)."""
    m = _YES_NO_LEAD.match(_expand_contractions(text).lower().strip())
    if not m:
        return None, ""
    word, rest = m.group(1), m.group(2)
    if word == "no" and not _NO_COMMITS.match(rest):
        return None, ""
    return word, rest


def _yes_no_verdict(prediction: str, truth: str, truth_rest: str) -> Verdict:
    lowered = _expand_contractions(prediction).lower()
    if _YES_NO_BOTH.search(lowered):
        return Verdict(False, "hedge")  # 'yes and no' commits to neither
    word, rest = _yes_no_commitment(prediction)
    if word is None:
        if _REFUSAL.search(lowered):
            return Verdict(False, "refusal")  # 'not sure', 'no idea'
        if _YES_NO_HEDGE.search(lowered):
            return Verdict(False, "hedge")  # 'maybe', 'probably yes' commit to nothing
        return Verdict(None, "yes_no_absent")  # 'The cat is on the mat.' may well mean yes
    if word != truth:
        return Verdict(False, "yes_no")
    if truth_rest and normalize_answer(rest):
        return Verdict(None, "yes_no_elaborated")  # both say yes and then more: does the rest agree?
    return Verdict(True, "yes_no")


# ---- closed word classes and free text ------------------------------------------------------------------------

def _class_members(words: list[str], members: set[str]) -> tuple[set[str], set[str]]:
    """(affirmed, negated) members named in `words`; 'not red' negates red."""
    affirmed, negated = set(), set()
    for i, w in enumerate(words):
        w = _SYNONYMS.get(w, w)
        if w in members:
            before = words[max(0, i - 2):i]
            (negated if _NEGATORS & set(before) else affirmed).add(w)
    return affirmed, negated


def _class_verdict(pred_n: str, truth_word: str, members: set[str]) -> Verdict | None:
    words = pred_n.split()
    affirmed, negated = _class_members(words, members)
    if affirmed == {truth_word}:
        return Verdict(True, "word_class")
    if len(affirmed) > 1 and truth_word in affirmed:
        return Verdict(False, "hedge") if "or" in words else Verdict(None, "word_class_several")
    if _SHADES.search(pred_n):
        return Verdict(None, "word_class_shade")  # 'navy', 'round': maybe the truth in other words
    if affirmed:
        return Verdict(False, "word_class")  # names only other members: 'blue' for 'red'
    if truth_word in negated:
        return Verdict(False, "negated")
    return None


def _other_class_word(pred_n: str) -> bool:
    """The whole (unframed) prediction is one member of a closed class, or a number: 'red' for 'triangle'."""
    word = _SYNONYMS.get(pred_n, pred_n)
    in_class = any(word in members for members in WORD_CLASSES.values())
    return in_class or re.fullmatch(r"-?\d+(?:\.\d+)?", word) is not None


def _free_text_verdict(prediction: str, pred_n: str, truth_n: str) -> Verdict:
    unframed = _FRAME.sub("", pred_n)
    if unframed == truth_n:
        return Verdict(True, "equal")  # 'It is a dog.' for 'dog'
    contains = re.search(rf"(?:^| ){re.escape(truth_n)}(?: |$)", pred_n) is not None
    if _REFUSAL.search(pred_n) and not contains:
        return Verdict(False, "refusal")
    truth_word = _SYNONYMS.get(truth_n, truth_n)
    members = next((m for m in WORD_CLASSES.values() if truth_word in m), None)
    if members is not None:
        verdict = _class_verdict(pred_n, truth_word, members)
        if verdict is not None:
            return verdict
        if _other_class_word(unframed):
            return Verdict(False, "word_class")
    if len(truth_n.split()) <= 4 and contains:
        phrase = re.escape(truth_n)
        if re.search(rf"(?:^| )(?:not|no|never) {phrase}(?: |$)", pred_n) and \
                len(re.findall(rf"(?:^| ){phrase}(?: |$)", pred_n)) == 1:
            return Verdict(False, "negated")  # 'It is not a dog.'
        if re.fullmatch(rf"(?:.+ or {phrase}|{phrase} or .+)", unframed):
            return Verdict(False, "hedge")  # 'a dog or a cat'
    return Verdict(None, "free_text")


def rule_verdict(prediction: str | None, truth: str | None) -> Verdict:
    """True / False when a rule is certain of (mis)match, None when only a judge can tell."""
    if prediction is None or truth is None:
        return Verdict(False, "missing")
    truth_letter = _LETTER_ONLY.match(truth)
    if truth_letter and truth_letter.group(1).upper() in TRUTH_LETTERS:
        letter, why = _letter_commitment(prediction, TRUTH_LETTERS)
        if letter is not None:
            return Verdict(letter == truth_letter.group(1).upper(), "letter")
        if why == "hedge" or _REFUSAL.search(_expand_contractions(prediction).lower()):
            return Verdict(False, "hedge" if why == "hedge" else "refusal")
        # no letter at all: the output may name the option's text, which only the question shows
        return Verdict(None, f"letter_{why}")
    pred_n, truth_n = normalize_answer(prediction), normalize_answer(truth)
    if not truth_n:
        return Verdict(None, "empty_truth")
    if not pred_n:
        return Verdict(False, "empty")
    number = _pure_number(truth)
    if number is not None:  # before text equality, which drops '$', '%' and a sign's '-$'
        return _number_verdict(prediction, number)
    truth_bounds = _bounds(truth)
    if any(truth_bounds) and _yes_no_commitment(truth)[0] is None:
        # '5+', '~5', 'about 5': text equality would drop the '+' or '~', and the text rules read '5' as the answer
        same = pred_n == truth_n and _bounds(prediction) == truth_bounds
        return Verdict(True, "equal") if same else Verdict(None, "number_qualified")
    if pred_n == truth_n:
        return Verdict(True, "equal")
    if truth_n in ("yes", "no"):
        return _yes_no_verdict(prediction, truth_n, "")
    truth_word, truth_rest = _yes_no_commitment(truth)
    if truth_word is not None:  # 'Yes, the man is wearing a hat.': the polarity decides a disagreement
        return _yes_no_verdict(prediction, truth_word, truth_rest)
    return _free_text_verdict(prediction, pred_n, truth_n)


def answers_match(prediction: str | None, truth: str | None) -> bool:
    """The rules' certain match: option letter, number, yes/no, closed class, normalised text. Deferred → False."""
    return rule_verdict(prediction, truth).match is True


def exact_match(prediction: str, truth: str) -> bool:
    return prediction is not None and truth is not None and prediction.strip() == truth.strip()


MATCHERS: dict[str, Callable[[str, str], bool]] = {"default": answers_match, "exact": exact_match}


def get_matcher(name: str) -> Callable[[str, str], bool | None]:
    """A matcher by name ('default', 'exact') or 'package.module:function'."""
    if name in MATCHERS:
        return MATCHERS[name]
    module, sep, attr = name.partition(":")
    if not sep:
        raise ValueError(f"matcher must be one of {sorted(MATCHERS)} or 'package.module:function', got {name!r}")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load matcher {name!r}: {err}") from None
    if not callable(fn):
        raise ValueError(f"matcher {name!r} is not callable")
    return fn


def get_verdict_matcher(name: str) -> Callable[[str, str], Verdict]:
    """A three-way matcher: 'default' is `rule_verdict`; any other matcher's True/False/None is checked."""
    if name == "default":
        return rule_verdict
    fn = get_matcher(name)

    def verdict(prediction: str, truth: str) -> Verdict:
        result = fn(prediction, truth)
        if result is not None and not isinstance(result, bool):
            raise ValueError(f"matcher {name!r} returned {result!r}; a matcher returns True, False or None")
        return Verdict(result, name)

    return verdict
