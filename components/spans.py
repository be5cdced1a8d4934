"""Which input files make up a span: `{SPAN}`, `{VERSION}` and `{YYYY}{MM}{DD}` patterns.

An input pattern is a glob relative to an input base directory, e.g. `span-{SPAN}/*.csv`,
`{YYYY}-{MM}-{DD}/v{VERSION}/part-*.parquet` or plain `*.csv` (one span, number 0).
A date pattern's span is the number of days since 1970-01-01, as in TFX. Each span takes
its newest version. By default the newest span is read; `span_range` [first, last] reads
every span in it (TFX's RangeConfig.static_range); `rolling_num_spans` N reads the rolling
window [newest - N + 1, newest] of span numbers (TFX's RangeConfig.rolling_range with
num_spans, whose window is in span numbers and "clipped based on available data": a span
of the window without files is left out and reported, not an error).
Only the standard library is used: resolving a span is part of ExampleGen's cache key.
"""
from __future__ import annotations

import datetime as dt
import glob
import hashlib
import os
import re
from dataclasses import dataclass, field

SPAN, VERSION = "{SPAN}", "{VERSION}"
DATE_PARTS = ("{YYYY}", "{MM}", "{DD}")
_PLACEHOLDER_REGEX = {
    SPAN: r"(?P<span>\d+)",
    VERSION: r"(?P<version>\d+)",
    "{YYYY}": r"(?P<year>\d{4})",
    "{MM}": r"(?P<month>\d{2})",
    "{DD}": r"(?P<day>\d{2})",
}
_TOKENS = re.compile(r"\{SPAN\}|\{VERSION\}|\{YYYY\}|\{MM\}|\{DD\}|\*|\?|\[[^\]/]*\]")
EPOCH = dt.date(1970, 1, 1)


class InputPatternError(ValueError):
    """The pattern itself is malformed (found when the pipeline is defined or run)."""


class NoInputError(FileNotFoundError):
    """No input file matches (or none in the requested span range)."""


@dataclass(frozen=True)
class InputSelection:
    """The files one ExampleGen execution reads, with the span and version they carry."""

    files: list[str]  # absolute paths, sorted
    span: int  # the newest span read
    version: int | None  # the newest span's version
    spans: list[int]  # every span read, ascending
    window: list[int] | None = None  # [first, last] span numbers asked for (a range)
    absent: list[int] = field(default_factory=list)  # spans of the window without files

    def fingerprint(self) -> str:
        """Hash of every file's relative name and bytes: changes iff the input changes."""
        digest = hashlib.sha256()
        root = os.path.commonpath(self.files) if len(self.files) > 1 else os.path.dirname(
            self.files[0])
        for path in self.files:
            digest.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()


def check_pattern(pattern: str) -> None:
    """Rejects patterns whose placeholders cannot be resolved unambiguously."""
    has_span = SPAN in pattern
    date_parts = [p for p in DATE_PARTS if p in pattern]
    if has_span and date_parts:
        raise InputPatternError(f"input pattern {pattern!r} mixes {SPAN} with a date "
                                f"({''.join(DATE_PARTS)}); use one or the other")
    if date_parts and len(date_parts) != len(DATE_PARTS):
        raise InputPatternError(f"input pattern {pattern!r} has {''.join(date_parts)} but a "
                                f"date needs all of {''.join(DATE_PARTS)}")
    if VERSION in pattern and not (has_span or date_parts):
        raise InputPatternError(f"input pattern {pattern!r} has {VERSION} but no {SPAN} "
                                f"or date: a version is a version of a span")
    for token in (SPAN, VERSION, *DATE_PARTS):
        if pattern.count(token) > 1:
            raise InputPatternError(f"input pattern {pattern!r} repeats {token}")
    if os.path.isabs(pattern) or pattern.startswith(".."):
        raise InputPatternError(f"input pattern {pattern!r} must be relative to the input base")


def _as_glob(pattern: str) -> str:
    for token in _PLACEHOLDER_REGEX:
        pattern = pattern.replace(token, "*")
    return pattern


def _as_regex(pattern: str) -> re.Pattern:
    parts, position = [], 0
    for match in _TOKENS.finditer(pattern):
        parts.append(re.escape(pattern[position:match.start()]))
        token = match.group()
        if token in _PLACEHOLDER_REGEX:
            parts.append(_PLACEHOLDER_REGEX[token])
        elif token == "*":
            parts.append(r"[^/]*")
        elif token == "?":
            parts.append(r"[^/]")
        else:  # a [...] character class, glob spelling
            body = token[1:-1]
            parts.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
        position = match.end()
    parts.append(re.escape(pattern[position:]))
    return re.compile("".join(parts))


def _span_of(match: re.Match, path: str) -> int:
    groups = match.groupdict()
    if groups.get("span") is not None:
        return int(groups["span"])
    if groups.get("year") is not None:
        try:
            day = dt.date(int(groups["year"]), int(groups["month"]), int(groups["day"]))
        except ValueError as exc:
            raise InputPatternError(f"{path}: not a valid date ({exc})") from None
        return (day - EPOCH).days
    return 0


def date_of_span(span: int) -> dt.date:
    return EPOCH + dt.timedelta(days=span)


def check_range(pattern: str, span_range: list[int] | None,
                rolling_num_spans: int | None) -> None:
    """Rejects a span range that cannot be resolved: a malformed `span_range`, a
    `rolling_num_spans` below 1, both at once (TFX's RangeConfig is a oneof), or a rolling
    window on a pattern without {SPAN} or a date (TFX: "Span or Date spec should be
    specified in split pattern if RangeConfig is specified")."""
    if span_range is not None and (len(span_range) != 2 or span_range[0] > span_range[1]):
        raise InputPatternError(f"span_range must be [first, last] with first <= last, "
                                f"got {span_range}")
    if rolling_num_spans is None:
        return
    if rolling_num_spans < 1:
        raise InputPatternError(f"rolling_num_spans must be at least 1, got {rolling_num_spans}")
    if span_range is not None:
        raise InputPatternError(f"span_range {span_range} and rolling_num_spans "
                                f"{rolling_num_spans} both set: give one (a static or a "
                                f"rolling range)")
    if SPAN not in pattern and not any(part in pattern for part in DATE_PARTS):
        raise InputPatternError(f"rolling_num_spans needs an input pattern with {SPAN} or "
                                f"{''.join(DATE_PARTS)}; {pattern!r} has neither")


def select_input(input_base: str, pattern: str, span_range: list[int] | None = None,
                 rolling_num_spans: int | None = None) -> InputSelection:
    """The files to read, each span at its newest version: the newest span; or every span
    in `span_range` [first, last] (inclusive); or, with `rolling_num_spans` N, every span of
    the window [newest - N + 1, newest] that has files (the others are listed in
    `absent`). Raises NoInputError naming the base and pattern if nothing matches,
    InputPatternError for a malformed pattern or range (see check_range)."""
    check_pattern(pattern)
    check_range(pattern, span_range, rolling_num_spans)
    base = os.path.abspath(os.path.expanduser(input_base))
    if not os.path.isdir(base):
        raise NoInputError(f"input base {base} does not exist or is not a directory")
    regex = _as_regex(pattern)
    found: dict[int, dict[int | None, list[str]]] = {}
    for relative in glob.glob(_as_glob(pattern), root_dir=base):
        path = os.path.join(base, relative)
        match = regex.fullmatch(relative.replace(os.sep, "/"))
        if match is None or not os.path.isfile(path):
            continue
        version = match.groupdict().get("version")
        span = _span_of(match, path)
        found.setdefault(span, {}).setdefault(
            int(version) if version is not None else None, []).append(path)
    if not found:
        raise NoInputError(f"no input file matches {pattern!r} under {base}")
    spans = sorted(found)
    window = None
    if rolling_num_spans is not None:
        window = [spans[-1] - rolling_num_spans + 1, spans[-1]]
        chosen = [s for s in spans if window[0] <= s <= window[1]]
    elif span_range is None:
        chosen = [spans[-1]]
    else:
        window = list(span_range)
        first, last = span_range
        chosen = [s for s in spans if first <= s <= last]
        if not chosen:
            raise NoInputError(f"no span in range {first}..{last} under {base} for {pattern!r}; "
                               f"spans found: {spans}")
    absent = ([s for s in range(window[0], window[1] + 1) if s not in found]
              if rolling_num_spans is not None else [])
    files, version = [], None
    for span in chosen:
        versions = found[span]
        version = max(versions, key=lambda v: -1 if v is None else v)
        files.extend(sorted(versions[version]))
    return InputSelection(files=files, span=chosen[-1], version=version, spans=chosen,
                          window=window, absent=absent)
