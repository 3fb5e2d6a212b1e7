"""python-ovs's JSON-RPC messages framed here and parsed by the standard library.

python-ovs parses what an OVSDB server sends with ``ovs._json`` (C) when it is
built, else with ``ovs.json.Parser``: a pure-Python lexer and parser stepping
through every character.  Debian has no ``libopenvswitch`` to build the C one, so
every update a leaf sends (our own writes come back as updates too) was parsed a
character at a time: the largest single cost of programming many networks in the
lab's profiles (~40 % of a leaf's transaction under load).

:class:`Parser` offers the C parser's interface (``feed`` returns bytes consumed,
``is_done``, ``finish``) to ``ovs.jsonrpc``: it finds where a message ends with a
regular expression over the characters that matter (quotes, backslashes, brackets;
a string's brackets are skipped, an escaped quote too) and hands the whole message
to ``json.loads``.  :func:`install` makes python-ovs use it where the C parser is
missing; it changes nothing where ``ovs._json`` exists.
"""
from __future__ import annotations

import json
import re
import sys
import types
from typing import Any

import ovs
import ovs.json

# Quotes, backslashes and brackets: all a message's end depends on.
_STRUCTURE = re.compile(r'["\\{}\[\]]')
_SPACE = " \t\r\n"


class Parser:
    """One JSON value (an object or array, as JSON-RPC messages are) from pieces."""

    def __init__(self, check_trailer: bool = False) -> None:
        self.check_trailer = check_trailer
        self._parts: list[str] = []
        self._depth = 0
        self._in_string = False
        self._skip = 0                 # characters of the next piece escaped (0 or 1)
        self._started = False
        self._done = False
        self._error: str | None = None
        self._trailer = False

    def feed(self, text: str) -> int:
        """Take the start of ``text`` up to the end of the value; the UTF-8 byte count
        taken (``ovs.jsonrpc`` slices its input by bytes, as for the C parser)."""
        if self._done or self._error is not None:
            return self._trailing(text)
        start = 0
        if not self._started:
            start = len(text) - len(text.lstrip(_SPACE))
            if start == len(text):
                return len(text.encode("utf-8"))
            if text[start] not in "{[":
                self._error = (f"JSON-RPC message starts with {text[start]!r}, not an "
                               "object or array")
                return len(text.encode("utf-8"))
            self._started = True
        skip_to = start + self._skip
        self._skip = 0
        end = None
        for match in _STRUCTURE.finditer(text, start):
            pos = match.start()
            if pos < skip_to:
                continue                       # an escaped character
            char = text[pos]
            if char == "\\":
                if self._in_string:
                    skip_to = pos + 2
                continue
            if char == '"':
                self._in_string = not self._in_string
            elif self._in_string:
                continue
            elif char in "{[":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    end = pos + 1
                    break
        if end is None:
            self._skip = max(0, skip_to - len(text))
            self._parts.append(text[start:])
            return len(text.encode("utf-8"))
        self._parts.append(text[start:end])
        self._done = True
        return len(text[:end].encode("utf-8")) + self._trailing(text[end:])

    def _trailing(self, rest: str) -> int:
        """With ``check_trailer`` (a whole document): the rest is taken, and anything
        but space there is an error; else nothing after the value is taken."""
        if not self.check_trailer:
            return 0
        if rest.strip(_SPACE):
            self._trailer = True
        return len(rest.encode("utf-8"))

    def is_done(self) -> bool:
        return self._done or self._error is not None

    def finish(self) -> Any:
        """The value, or (as python-ovs's parsers do) a string saying what is wrong."""
        if self._error is not None:
            return self._error
        if not self._done:
            return "unexpected end of input"
        if self._trailer:
            return "trailing garbage at end of input"
        try:
            return json.loads("".join(self._parts))
        except ValueError as exc:
            return f"invalid JSON-RPC message: {exc}"


def install() -> bool:
    """Make python-ovs parse with :class:`Parser` where its C parser is missing;
    True if it now does (idempotent)."""
    if ovs.json.PARSER == ovs.json.PARSER_C:
        return getattr(sys.modules.get("ovs._json"), "Parser", None) is Parser
    module = types.ModuleType("ovs._json")
    module.Parser = Parser              # type: ignore[attr-defined]
    sys.modules["ovs._json"] = module
    ovs._json = module                  # type: ignore[attr-defined]
    # ovs.json names ``ovs._json`` only if its own import of it worked.
    ovs.json.ovs = ovs                  # type: ignore[attr-defined]
    ovs.json.PARSER = ovs.json.PARSER_C
    return True
