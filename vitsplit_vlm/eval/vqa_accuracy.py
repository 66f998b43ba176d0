"""The VQA accuracy as the official evaluation computes it today, for VQAv2, VizWiz and TextVQA-style answers.

Follows GT-Vision-Lab/VQA ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` at a013f00 (2021-03-11, "Fixed
processing answers bug"), the head revision, which lmms-eval's VQAv2 scoring also follows. Reimplemented because the
official file is Python-2 code built around its own loader classes; this module reproduces it rule for rule:

* every human answer and the prediction: newlines/tabs -> spaces, strip;
* when the human answers are not all identical (after that cleaning), **both** the human answers and the prediction
  go through the punctuation pass and then the digit/article pass (lowercase, number words -> digits, drop articles,
  restore contractions); when they are all identical, neither is normalised further (so "Yes" scores 0 against ten
  "yes", as on the official server);
* the punctuation pass removes a mark outright when it touches a space somewhere in the answer (or when the
  answer contains digit,digit), else replaces it with a space; periods are dropped unless followed by a digit
  (the official lookbehind is misspelt as the lookahead ``(?!<=\\d)``, which never fires, and ``re.UNICODE`` is
  passed where ``count`` goes, so at most 32 periods are removed);
* accuracy of an answer = mean over the leave-one-out subsets (10 in VQAv2 and VizWiz) of min(#matching humans / 3, 1).

The 2016 revision differed: it always normalised the prediction fully and gave the human answers the punctuation
pass only.
"""

from __future__ import annotations

import re

# Official contractions table: keys are answers with the apostrophes left out. The capitalised keys can never
# match (words are lowercased first) and "somebody'd" maps the "wrong" way; both kept as in the official table.
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
# Marks handled by the punctuation pass (no apostrophe, colon, period, %, #, $, & ...), in the official order.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # official pattern, see module docstring
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_MAX_PERIODS_REMOVED = int(re.UNICODE)  # official code passes re.UNICODE (32) as re.sub's count


def process_punctuation(text: str) -> str:
    """Official punctuation pass; the 'touches a space' test looks at the original text, not the running result."""
    out = text
    strip_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in PUNCTUATION:
        if strip_all or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS_REMOVED)


def process_digit_article(text: str) -> str:
    """Official word pass: lowercase, number words -> digits, drop articles, restore contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def clean_answer(answer: str) -> str:
    """Official first step for every answer: newlines and tabs -> spaces, then strip."""
    return answer.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(answer: str) -> str:
    """Full official normalisation (clean, punctuation pass, digit/article pass): what submissions are written as."""
    return process_digit_article(process_punctuation(clean_answer(answer)))


def vqa_accuracy(prediction: str, gt_answers: list[str]) -> float:
    """Official VQA accuracy in [0, 1] of one raw prediction against the human answers (10 in VQAv2 and VizWiz).

    Leave-one-out by position (the official code compares answer dicts, which differ by their answer_id).
    With one reference the leave-one-out subsets are empty and the score is always 0, so that is refused."""
    if len(gt_answers) < 2:
        raise ValueError(f"vqa_accuracy needs the human answers (10 in VQAv2), got {len(gt_answers)}; "
                         "score a single reference answer with exact_match")
    gts = [clean_answer(a) for a in gt_answers]
    pred = clean_answer(prediction)
    if len(set(gts)) > 1:  # only then are both sides normalised (a013f00)
        gts = [normalize_answer(g) for g in gts]
        pred = normalize_answer(pred)
    matches = [g == pred for g in gts]
    total = sum(matches)
    return sum(min(1.0, (total - m) / 3) for m in matches) / len(gts)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when both answers are equal after the full official normalisation: for sets with one reference."""
    return float(normalize_answer(prediction) == normalize_answer(reference))
