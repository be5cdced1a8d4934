"""JSON text the way TF Serving's RapidJSON reads and writes it.

Reading: orjson parses well-formed bodies; anything it refuses goes through a small RapidJSON-
compatible parser, which also accepts what RapidJSON accepts and orjson does not (NaN/Infinity
tokens, integers beyond 64 bits, raw non-UTF-8 bytes inside strings) and otherwise reports
RapidJSON's error message and byte offset. Strings holding raw non-UTF-8 bytes are decoded with
surrogateescape so they round-trip to the original bytes.

Writing: RapidJSON's PrettyWriter layout (4-space indent, kFormatSingleLineArray where TF
Serving switches it on) and TF Serving's decimal formatting (WriteDecimal in json_tensor.cc).
"""

from __future__ import annotations

import math

import numpy as np
import orjson

from serving.errors import ServingError, INVALID_ARGUMENT

# ---------------------------------------------------------------- parsing


class _ParseError(Exception):
    def __init__(self, message: str, offset: int):
        self.message = message
        self.offset = offset


_WS = b" \t\n\r"
_ESCAPES = {ord('"'): b'"', ord("\\"): b"\\", ord("/"): b"/", ord("b"): b"\b",
            ord("f"): b"\f", ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t"}
_HEX = b"0123456789abcdefABCDEF"
_INT64_MIN, _UINT64_MAX = -(1 << 63), (1 << 64) - 1


def loads(body: bytes):
    """Parse a request body; ServingError(INVALID_ARGUMENT) with RapidJSON's message on failure."""
    if not body:
        raise ServingError(INVALID_ARGUMENT, "JSON Parse error: The document is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return _Parser(bytes(body)).parse_document()
    except _ParseError as e:
        raise ServingError(INVALID_ARGUMENT,
                           f"JSON Parse error: {e.message} at offset: {e.offset}") from None
    except RecursionError:  # pragma: no cover - the parser is iterative
        raise ServingError(INVALID_ARGUMENT, "JSON Parse error: document too deeply nested") from None


class _Parser:
    """Iterative so that deeply nested garbage cannot exhaust the Python stack."""

    def __init__(self, data: bytes):
        self.s = data
        self.n = len(data)
        self.i = 0

    def peek(self) -> int:
        # RapidJSON's MemoryStream reads NUL at the end, and a NUL byte looks the same.
        return self.s[self.i] if self.i < self.n else 0

    def skip_ws(self):
        s, n, i = self.s, self.n, self.i
        while i < n and s[i] in _WS:
            i += 1
        self.i = i

    def parse_document(self):
        self.skip_ws()
        if self.peek() == 0:
            raise _ParseError("The document is empty.", self.i)
        value = self.parse_value()
        self.skip_ws()
        if self.peek() != 0:
            raise _ParseError("The document root must not be followed by other values.", self.i)
        return value

    def parse_value(self):
        # Containers are built with an explicit stack: (container, pending_key).
        stack: list = []
        while True:
            c = self.peek()
            if c == ord("{"):
                self.i += 1
                self.skip_ws()
                if self.peek() == ord("}"):
                    self.i += 1
                    value = {}
                else:
                    stack.append([{}, self._member_name()])
                    self.skip_ws()
                    continue
            elif c == ord("["):
                self.i += 1
                self.skip_ws()
                if self.peek() == ord("]"):
                    self.i += 1
                    value = []
                else:
                    stack.append([[], None])
                    continue
            else:
                value = self.parse_scalar()
            # Attach value to enclosing containers, closing them as far as possible.
            while True:
                if not stack:
                    return value
                container, key = stack[-1]
                self.skip_ws()
                if isinstance(container, list):
                    container.append(value)
                    c = self.peek()
                    if c == ord(","):
                        self.i += 1
                        self.skip_ws()
                        break
                    if c == ord("]"):
                        self.i += 1
                        stack.pop()
                        value = container
                        continue
                    raise _ParseError("Missing a comma or ']' after an array element.", self.i)
                if key not in container:  # RapidJSON's FindMember returns the first duplicate
                    container[key] = value
                c = self.peek()
                if c == ord(","):
                    self.i += 1
                    self.skip_ws()
                    stack[-1][1] = self._member_name()
                    self.skip_ws()
                    break
                if c == ord("}"):
                    self.i += 1
                    stack.pop()
                    value = container
                    continue
                raise _ParseError("Missing a comma or '}' after an object member.", self.i)

    def _member_name(self) -> str:
        if self.peek() != ord('"'):
            raise _ParseError("Missing a name for object member.", self.i)
        name = self.parse_string()
        self.skip_ws()
        if self.peek() != ord(":"):
            raise _ParseError("Missing a colon after a name of object member.", self.i)
        self.i += 1
        self.skip_ws()
        return name

    def parse_scalar(self):
        c = self.peek()
        if c == ord('"'):
            return self.parse_string()
        if c == ord("t"):
            return self._literal(b"true", True)
        if c == ord("f"):
            return self._literal(b"false", False)
        if c == ord("n"):
            return self._literal(b"null", None)
        return self.parse_number()

    def _literal(self, word: bytes, value):
        start = self.i
        for k, ch in enumerate(word):
            if self.peek() != ch:
                raise _ParseError("Invalid value.", start if k == 0 else self.i)
            self.i += 1
        return value

    def parse_number(self):
        s = self.s
        start = self.i
        minus = self.peek() == ord("-")
        if minus:
            self.i += 1
        c = self.peek()
        if c == ord("N"):
            self.i += 1
            if self.peek() == ord("a"):
                self.i += 1
                if self.peek() == ord("N"):
                    self.i += 1
                    return math.nan
            raise _ParseError("Invalid value.", self.i)
        if c == ord("I"):
            self.i += 1
            if self.peek() == ord("n"):
                self.i += 1
                if self.peek() == ord("f"):
                    self.i += 1
                    if self.peek() == ord("i"):
                        for ch in b"inity":
                            if self.peek() != ch:
                                raise _ParseError("Invalid value.", self.i)
                            self.i += 1
                    return -math.inf if minus else math.inf
            raise _ParseError("Invalid value.", self.i)
        if c == ord("0"):
            self.i += 1
        elif ord("1") <= c <= ord("9"):
            while ord("0") <= self.peek() <= ord("9"):
                self.i += 1
        else:
            raise _ParseError("Invalid value.", self.i if minus else start)
        is_double = False
        if self.peek() == ord("."):
            is_double = True
            self.i += 1
            if not ord("0") <= self.peek() <= ord("9"):
                raise _ParseError("Miss fraction part in number.", self.i)
            while ord("0") <= self.peek() <= ord("9"):
                self.i += 1
        if self.peek() in (ord("e"), ord("E")):
            is_double = True
            self.i += 1
            if self.peek() in (ord("+"), ord("-")):
                self.i += 1
            if not ord("0") <= self.peek() <= ord("9"):
                raise _ParseError("Miss exponent in number.", self.i)
            while ord("0") <= self.peek() <= ord("9"):
                self.i += 1
        text = s[start:self.i]
        if not is_double:
            value = int(text)
            if _INT64_MIN <= value <= _UINT64_MAX:
                return value
        value = float(text)
        if math.isinf(value):
            raise _ParseError("Number too big to be stored in double.", start)
        return value

    def parse_string(self) -> str:
        s, n = self.s, self.n
        self.i += 1  # opening quote
        out = bytearray()
        while True:
            i = self.i
            # Copy the run of ordinary bytes in one slice.
            j = i
            while j < n and s[j] != 0x22 and s[j] != 0x5C and s[j] >= 0x20:
                j += 1
            out += s[i:j]
            self.i = j
            c = self.peek()
            if c == 0x22:
                self.i += 1
                return out.decode("utf-8", "surrogateescape")
            if c == 0x5C:
                escape_at = self.i
                self.i += 1
                e = self.peek()
                if e in _ESCAPES:
                    out += _ESCAPES[e]
                    self.i += 1
                elif e == ord("u"):
                    self.i += 1
                    code = self._hex4(escape_at)
                    if 0xD800 <= code <= 0xDBFF:
                        if self.peek() != 0x5C or self.s[self.i + 1:self.i + 2] != b"u":
                            raise _ParseError("The surrogate pair in string is invalid.", escape_at)
                        self.i += 2
                        low = self._hex4(escape_at)
                        if not 0xDC00 <= low <= 0xDFFF:
                            raise _ParseError("The surrogate pair in string is invalid.", escape_at)
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    out += chr(code).encode("utf-8", "surrogatepass")
                else:
                    raise _ParseError("Invalid escape character in string.", escape_at)
                continue
            if c == 0:
                raise _ParseError("Missing a closing quotation mark in string.", self.i)
            raise _ParseError("Invalid encoding in string.", self.i)

    def _hex4(self, escape_at: int) -> int:
        digits = self.s[self.i:self.i + 4]
        if len(digits) != 4 or any(d not in _HEX for d in digits):
            raise _ParseError("Incorrect hex digit after \\u escape in string.", escape_at)
        self.i += 4
        return int(digits, 16)


# ---------------------------------------------------------------- writing

_STRING_ESCAPES = {i: "\\u%04X" % i for i in range(0x20)}
_STRING_ESCAPES.update({0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r",
                        0x22: '\\"', 0x5C: "\\\\"})


def quote(text: str) -> str:
    """RapidJSON Writer::String: escapes quote, backslash and control characters only."""
    return '"' + text.translate(_STRING_ESCAPES) + '"'


def format_float32(value: float) -> str:
    """WriteDecimal<float>: six significant digits if they round-trip, else nine."""
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "-Infinity" if value < 0 else "Infinity"
    text = "%g" % value
    if np.float32(text) != np.float32(value):
        text = "%.9g" % value
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def format_float64(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "-Infinity" if value < 0 else "Infinity"
    text = "%g" % value
    if float(text) != value:
        text = "%.17g" % value
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def format_float32_array(values: np.ndarray) -> list[str]:
    """format_float32 over a float32 array, vectorizing the round-trip check."""
    flat = values.reshape(-1)
    as_python = flat.tolist()
    texts = ["%g" % v for v in as_python]
    if not texts:
        return texts
    with np.errstate(all="ignore"):
        back = np.array(texts, dtype=np.float32)
    bad = np.nonzero(~((back == flat) | (np.isnan(back) & np.isnan(flat))))[0]
    for k in bad.tolist():
        texts[k] = "%.9g" % as_python[k]
    special = not np.isfinite(flat).all()
    for k, text in enumerate(texts):
        if special and text in ("nan", "-nan", "inf", "-inf"):
            texts[k] = "NaN" if "nan" in text else ("-Infinity" if text[0] == "-" else "Infinity")
        elif "." not in text and "e" not in text:
            texts[k] = text + ".0"
    return texts


def _rapidjson_double(value: float) -> str:
    """Writer::Double (Grisu shortest digits, Prettify layout) for values nested in messages."""
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    if value == 0:
        return "-0.0" if math.copysign(1, value) < 0 else "0.0"
    sign = "-" if value < 0 else ""
    mantissa, _, exp = repr(abs(value)).partition("e")
    whole, _, frac = mantissa.partition(".")
    # value = int(digits) * 10**k, digits without leading or trailing zeros.
    k = int(exp or 0) - len(frac)
    digits = (whole + frac).lstrip("0")
    stripped = digits.rstrip("0")
    k += len(digits) - len(stripped)
    digits = stripped or "0"
    length = len(digits)
    kk = length + k
    if 0 <= k and kk <= 21:
        return sign + digits + "0" * k + ".0"
    if 0 < kk <= 21:
        return sign + digits[:kk] + "." + digits[kk:]
    if -6 < kk <= 0:
        return sign + "0." + "0" * (-kk) + digits
    if length == 1:
        return sign + digits + "e" + str(kk - 1)
    return sign + digits[0] + "." + digits[1:] + "e" + str(kk - 1)


def type_name(value) -> str:
    """json_tensor.cc JsonTypeString."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def value_to_string(value) -> str:
    """json_tensor.cc JsonValueToString: PrettyWriter output, top-level decimals via WriteDecimal."""
    if isinstance(value, float):
        if float(np.float32(value)) == value or value != value:
            return format_float32(value)
        return format_float64(value)
    parts: list[str] = []
    _pretty(value, 0, parts)
    return "".join(parts)


def _pretty(value, depth: int, out: list[str]) -> None:
    if isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        out.append("{")
        pad = "\n" + "    " * (depth + 1)
        first = True
        for key, item in value.items():
            out.append(pad if first else "," + pad)
            first = False
            out.append(quote(key))
            out.append(": ")
            _pretty(item, depth + 1, out)
        out.append("\n" + "    " * depth + "}")
    elif isinstance(value, list):
        if not value:
            out.append("[]")
            return
        out.append("[")
        pad = "\n" + "    " * (depth + 1)
        first = True
        for item in value:
            out.append(pad if first else "," + pad)
            first = False
            _pretty(item, depth + 1, out)
        out.append("\n" + "    " * depth + "]")
    elif isinstance(value, str):
        out.append(quote(value))
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif value is None:
        out.append("null")
    elif isinstance(value, int):
        out.append(str(value))
    else:
        out.append(_rapidjson_double(value))


def error_body(message: str) -> bytes:
    """MakeJsonFromStatus."""
    return ('{\n    "error": ' + quote(message) + "\n}").encode("utf-8", "surrogateescape")
