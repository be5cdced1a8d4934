"""Integer text parsing with the exact rules of the C++ parsers TF Serving uses.

Python's int() is far more lenient than those parsers (it takes "1_000", non-ASCII digits,
"+5" and any size, and raises past 4300 digits), so anything read from a directory name, a
URL or a flag goes through these instead; a name that does not parse is not a number, and a
number that does not fit is rejected, never passed on to a protobuf field that would fail
later with "Value out of range".
"""

from __future__ import annotations

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

_C_SPACE = " \t\n\v\f\r"  # isspace() in the C locale
_DIGITS = "0123456789"


def _strto(text: str, low: int, high: int) -> int | None:
    """tsl::strings::safe_strto32/64: optional C spaces around, an optional '-', ASCII
    digits, within [low, high]; None if the text is anything else."""
    text = text.strip(_C_SPACE)
    negative = text.startswith("-")
    digits = text[1:] if negative else text
    if not digits or any(c not in _DIGITS for c in digits):
        return None
    digits = digits.lstrip("0") or "0"
    if len(digits) > 20:  # beyond any 64-bit value; spares int() a huge conversion
        return None
    value = -int(digits) if negative else int(digits)
    return value if low <= value <= high else None


def safe_strto64(text: str) -> int | None:
    return _strto(text, INT64_MIN, INT64_MAX)


def safe_strto32(text: str) -> int | None:
    return _strto(text, INT32_MIN, INT32_MAX)


def simple_atoi64(text: str) -> int | None:
    """absl::SimpleAtoi into int64_t: like safe_strto64, and a leading '+' is accepted too."""
    stripped = text.strip(_C_SPACE)
    if stripped.startswith("+"):
        stripped = stripped[1:]
        if not stripped[:1].isdigit():  # no second sign, no space after the sign
            return None
    return safe_strto64(stripped)
