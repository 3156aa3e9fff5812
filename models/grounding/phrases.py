"""Report text -> phrases: sentences, clauses, findings, negation, uncertainty, side and place.

A rule-based reader (the lexicon in :mod:`models.grounding.lexicon`), chosen because it is
transparent and testable and because no trained report parser can be had here:

1. **Sentences** end at ``.``, ``!``, ``?`` followed by a space, or at a line break; decimals
   ("1.5 cm"), "vs." and list numbers do not end one; a section header ("IMPRESSION:") is dropped
   from the sentence's span.
2. **Mentions**: every finding synonym and location word in the sentence, longest match first.
3. **Negation and uncertainty** (NegEx, Chapman et al. 2001): a trigger before a mention ("no",
   "without", "cannot exclude") or after it ("is not seen", "has resolved") covers the mention
   unless a termination term ("but", "however", ";", "there is") lies between them. Uncertainty
   triggers are found first and hide the negation words inside them ("not excluded").
4. **Phrases**: the sentence is cut at ``;``, ``,`` and at "and"/"with"/"but"; a piece starts
   a new phrase only when it names a finding and the phrase before it names a finding or a
   location of its own; otherwise it joins the phrase before. So "cardiomegaly with pulmonary
   edema" is two phrases and "opacity in the right lower zone and left base" is one.

Every sentence yields at least one phrase, groundable or not; character offsets index the full
report text, so a viewer can mark phrases in place.
"""

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from models.grounding.lexicon import (
    FINDING_REGION,
    FINDING_TERMS,
    LOCATION_TERMS,
    NEGATION_POST,
    NEGATION_PRE,
    PSEUDO_TRIGGERS,
    REGION_TERMS,
    SIDE_TERMS,
    TERMINATION,
    UNCERTAIN_POST,
    UNCERTAIN_PRE,
    Laterality,
    ReportRegion,
)

MatchedBy = Literal["lexicon", "embedding"]

_HEADER = re.compile(
    r"^\s*(?:findings|impression|conclusion|comparison|indication|history|clinical (?:history|"
    r"information|details)|technique|report|opinion|summary|examination|exam)\s*:\s*",
    re.IGNORECASE,
)
_LIST_NUMBER = re.compile(r"^\s*\(?\d{1,2}[.)]\s+")
# Abbreviations whose dot ends no sentence (a decimal's dot is never followed by a space).
_NO_BREAK_BEFORE_DOT = re.compile(r"(?:\bvs|\be\.g|\bi\.e|\bapprox|\bfig)$", re.IGNORECASE)
_CUT = re.compile(
    r"\s*;\s*|\s*,\s*(?:(?:and|but|with|while|whereas)\s+)?|\s+(?:and|but|with|whereas|while)\s+"
)
# "consistent with X", "associated with X": X belongs to the clause before.
_NO_CUT_BEFORE_WITH = re.compile(
    r"(?:consistent|compatible|keeping|associated|along|together|treated|concern)$", re.IGNORECASE
)


# A clause opening with these words speaks of the place named before it ("..., suggestive of").
_REFERS_BACK = re.compile(
    r"^(?:suggestive of|suggesting|consistent with|compatible with|in keeping with|likely|probably|"
    r"possibly|which|representing|concerning for|suspicious for|may represent|due to|secondary to|"
    r"related to|reflecting|favou?ring)\b"
)


@dataclass(frozen=True)
class Phrase:
    """One clause of a report and what it says, with its place in the report text."""

    text: str
    start: int
    end: int
    sentence_index: int
    findings: tuple[str, ...]
    negated: bool
    uncertain: bool
    laterality: Laterality | None
    locations: tuple[str, ...]
    report_region: ReportRegion | None
    matched_by: MatchedBy | None

    @property
    def groundable(self) -> bool:
        """Does the phrase name something to point at (a finding or a location)?"""
        return bool(self.findings or self.locations)


@dataclass(frozen=True)
class _Mention:
    start: int
    end: int
    findings: tuple[str, ...]
    negated: bool
    uncertain: bool


def parse_report(text: str) -> list[Phrase]:
    """Every phrase of ``text`` in reading order (see the module doc for the rules)."""
    if not isinstance(text, str):
        raise TypeError(f"report text must be str, not {type(text).__name__}")
    phrases: list[Phrase] = []
    for index, (start, end) in enumerate(split_sentences(text)):
        phrases.extend(_sentence_phrases(text, start, end, index))
    return phrases


def split_sentences(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each sentence with words in it, headers and list numbers dropped."""
    spans: list[tuple[int, int]] = []
    start = 0
    for index, char in enumerate(text):
        boundary = char == "\n" or (
            char in ".!?"
            and (index + 1 == len(text) or text[index + 1].isspace())
            and not _NO_BREAK_BEFORE_DOT.search(text[start:index])
        )
        if boundary:
            spans.append((start, index + 1))
            start = index + 1
    spans.append((start, len(text)))
    result = []
    for begin, finish in spans:
        begin = _skip_prefix(text, begin, finish)
        trimmed = _trim(text, begin, finish)
        if trimmed is not None and any(c.isalpha() for c in text[trimmed[0] : trimmed[1]]):
            result.append(trimmed)
    return result


def _skip_prefix(text: str, begin: int, finish: int) -> int:
    while True:
        piece = text[begin:finish]
        match = _HEADER.match(piece) or _LIST_NUMBER.match(piece)
        if match is None or match.end() == 0:
            return begin
        begin += match.end()


def _trim(text: str, begin: int, finish: int) -> tuple[int, int] | None:
    """The span without surrounding blanks and trailing punctuation; None when nothing is left."""
    while begin < finish and (text[begin].isspace() or text[begin] in ",;:-"):
        begin += 1
    while finish > begin and (text[finish - 1].isspace() or text[finish - 1] in ".,;:!"):
        finish -= 1
    return (begin, finish) if finish > begin else None


def _sentence_phrases(text: str, start: int, end: int, index: int) -> list[Phrase]:
    sentence = text[start:end].lower()
    mentions = _mentions(sentence)
    pieces = _pieces(sentence)
    groups: list[tuple[int, int]] = []
    for piece_start, piece_end in pieces:
        has_finding = any(piece_start <= m.start < piece_end for m in mentions)
        if groups and not (has_finding and _stands(groups[-1], mentions, sentence)):
            groups[-1] = (groups[-1][0], piece_end)
        else:
            groups.append((piece_start, piece_end))
    sentence_region = _region_of_words(sentence)
    phrases: list[Phrase] = []
    for g_start, g_end in groups:
        span = _trim(text, start + g_start, start + g_end)
        if span is None:
            continue
        inside = [m for m in mentions if g_start <= m.start < g_end]
        phrase = _phrase(text, span, index, inside, sentence, sentence_region, start)
        fragment = sentence[span[0] - start : span[1] - start]
        if phrases and _REFERS_BACK.match(fragment) and not phrase.locations:
            before = phrases[-1]
            phrase = replace(
                phrase,
                laterality=phrase.laterality or before.laterality,
                locations=before.locations,
            )
        phrases.append(phrase)
    return phrases


def _stands(group: tuple[int, int], mentions: Sequence[_Mention], sentence: str) -> bool:
    g_start, g_end = group
    return any(g_start <= m.start < g_end for m in mentions) or bool(
        _locations(sentence[g_start:g_end])
    )


def _pieces(sentence: str) -> list[tuple[int, int]]:
    """The sentence cut at clause boundaries (``;``, ``,``, "and", "with", "but")."""
    pieces = []
    begin = 0
    for cut in _CUT.finditer(sentence):
        if "with" in cut.group() and _NO_CUT_BEFORE_WITH.search(sentence[: cut.start()]):
            continue
        if cut.start() > begin:
            pieces.append((begin, cut.start()))
        begin = cut.end()
    if begin < len(sentence):
        pieces.append((begin, len(sentence)))
    return pieces or [(0, len(sentence))]


def _longest_first(
    found: Iterable[tuple[int, int, int]],
) -> list[tuple[int, int, int]]:
    """Non-overlapping ``(start, end, key)`` matches, longer ones winning, in text order."""
    chosen: list[tuple[int, int, int]] = []
    for start, end, key in sorted(found, key=lambda m: (m[0] - m[1], m[0])):
        if all(end <= s or start >= e for s, e, _ in chosen):
            chosen.append((start, end, key))
    return sorted(chosen)


def _spans(pattern: re.Pattern[str], sentence: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in pattern.finditer(sentence)]


def _mentions(sentence: str) -> list[_Mention]:
    """Finding mentions of one lower-case sentence with their negation and uncertainty."""
    found = [
        (m.start(), m.end(), k)
        for k, term in enumerate(FINDING_TERMS)
        for m in term.pattern.finditer(sentence)
    ]
    pseudo = _spans(PSEUDO_TRIGGERS, sentence)
    uncertain_pre = _spans(UNCERTAIN_PRE, sentence)
    uncertain_post = _spans(UNCERTAIN_POST, sentence)
    hidden = pseudo + uncertain_pre + uncertain_post
    negation_pre = [s for s in _spans(NEGATION_PRE, sentence) if not _overlaps(s, hidden)]
    negation_post = [s for s in _spans(NEGATION_POST, sentence) if not _overlaps(s, hidden)]
    stops = _spans(TERMINATION, sentence)
    mentions = []
    for start, end, key in _longest_first(found):
        term = FINDING_TERMS[key]
        inside_negation = [s for s in negation_pre if start <= s[0] and s[1] <= end]
        negated = term.polarity == "negative" or (
            not inside_negation
            and _in_scope((start, end), negation_pre, negation_post, stops, pseudo)
        )
        uncertain = _in_scope((start, end), uncertain_pre, uncertain_post, stops, [])
        mentions.append(_Mention(start, end, term.findings, negated, uncertain))
    return mentions


def _overlaps(span: tuple[int, int], others: Sequence[tuple[int, int]]) -> bool:
    return any(span[0] < e and s < span[1] for s, e in others)


def _in_scope(
    mention: tuple[int, int],
    pre: Sequence[tuple[int, int]],
    post: Sequence[tuple[int, int]],
    stops: Sequence[tuple[int, int]],
    shields: Sequence[tuple[int, int]],
) -> bool:
    """Is the mention covered by a trigger before it or after it, with no stop in between?"""
    start, end = mention
    for _t_start, t_end in pre:
        if (
            t_end <= start
            and not _between(stops, t_end, start)
            and not _between(shields, t_end, start)
        ):
            return True
    return any(t_start >= end and not _between(stops, end, t_start) for t_start, _ in post)


def _between(spans: Sequence[tuple[int, int]], left: int, right: int) -> bool:
    return any(left <= s and e <= right for s, e in spans)


def _locations(fragment: str) -> tuple[str, ...]:
    found = [
        (m.start(), m.end(), k)
        for k, (_, pattern) in enumerate(LOCATION_TERMS)
        for m in pattern.finditer(fragment)
    ]
    names: list[str] = []
    for _, _, key in _longest_first(found):
        name = LOCATION_TERMS[key][0]
        if name not in names:
            names.append(name)
    return tuple(names)


def _laterality(fragment: str) -> Laterality | None:
    sides = {side for side, pattern in SIDE_TERMS if pattern.search(fragment)}
    if "bilateral" in sides or {"right", "left"} <= sides:
        return "bilateral"
    if "right" in sides:
        return "right"
    if "left" in sides:
        return "left"
    return None


def _region_of_words(fragment: str) -> ReportRegion | None:
    """The region whose word comes first in ``fragment``."""
    best: tuple[int, ReportRegion] | None = None
    for region, pattern in REGION_TERMS:
        match = pattern.search(fragment)
        if match is not None and (best is None or match.start() < best[0]):
            best = (match.start(), region)
    return best[1] if best is not None else None


def _phrase(
    text: str,
    span: tuple[int, int],
    index: int,
    mentions: Sequence[_Mention],
    sentence: str,
    sentence_region: ReportRegion | None,
    sentence_start: int,
) -> Phrase:
    start, end = span
    fragment = sentence[start - sentence_start : end - sentence_start]
    findings: list[str] = []
    for mention in mentions:
        findings.extend(f for f in mention.findings if f not in findings)
    locations = _locations(fragment)
    if mentions:
        negated = all(m.negated for m in mentions)
        uncertain = any(m.uncertain for m in mentions if not m.negated)
        region: ReportRegion | None = FINDING_REGION.get(findings[0], "lung")
    else:
        negated = NEGATION_PRE.search(fragment) is not None and not PSEUDO_TRIGGERS.search(fragment)
        uncertain = bool(UNCERTAIN_PRE.search(fragment) or UNCERTAIN_POST.search(fragment))
        region = _region_of_words(fragment) or sentence_region
    return Phrase(
        text=text[start:end],
        start=start,
        end=end,
        sentence_index=index,
        findings=tuple(findings),
        negated=negated,
        uncertain=uncertain,
        laterality=_laterality(fragment),
        locations=locations,
        report_region=region,
        matched_by="lexicon" if findings or locations else None,
    )
