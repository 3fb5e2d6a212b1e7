"""The JSON-RPC framing python-ovs uses here (``fabric/ovs_json.py``): messages cut
anywhere, strings holding brackets, quotes, backslashes and non-ASCII text, parsed
as ``json`` and as python-ovs's own pure-Python parser parse them."""
from __future__ import annotations

import json
import random

import ovs.json
import pytest

from networking_dvs_fabric.fabric import ovs_json

TRICKY = ['{"a": [1, 2]}', 'x\\"y', "\\\\", "}", "]]]", "[{", '\\\\"}', "é", "€😀", "\\u00e9",
          "tab\there", "", " "]


def _value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(7 if depth < 4 else 4)
    if kind == 0:
        return rng.choice(TRICKY) + rng.choice(TRICKY)
    if kind == 1:
        return rng.randrange(-10**12, 10**12)
    if kind == 2:
        return rng.choice([True, False, None, 1.5, -0.25])
    if kind == 3:
        return ["uuid", f"{rng.getrandbits(128):032x}"]
    if kind == 4:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(TRICKY) + str(i): _value(rng, depth + 1)
            for i in range(rng.randrange(4))}


def _messages(rng: random.Random, count: int) -> list[dict]:
    return [{"id": i, "method": "update3", "params": [_value(rng), _value(rng)]}
            for i in range(count)]


def _receive(pieces: list[str]) -> list:
    """What ``ovs.jsonrpc.Connection.recv`` does with its input, with the C parser's
    interface: feed, slice the input by the bytes taken, finish when done."""
    out, pending, parser = [], "", None
    for piece in pieces:
        pending += piece
        while pending:
            parser = parser or ovs_json.Parser()
            pending = pending.encode("utf-8")[parser.feed(pending):].decode()
            if not parser.is_done():
                break
            out.append(parser.finish())
            parser = None
    return out


@pytest.mark.parametrize("seed", range(25))
def test_messages_cut_anywhere_come_out_as_json_parses_them(seed):
    rng = random.Random(seed)
    messages = _messages(rng, 6)
    stream = "".join(json.dumps(m, ensure_ascii=rng.random() < 0.5) +
                     rng.choice(["", "\n", "  "]) for m in messages)
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, 40)))
    pieces = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
    assert _receive(pieces) == messages


def test_one_character_at_a_time_and_python_ovs_agrees():
    message = _messages(random.Random(99), 1)[0]
    text = json.dumps(message)
    assert _receive(list(text)) == [message]
    slow = ovs.json.Parser.__new__(ovs.json.Parser)      # the pure-Python one
    slow.__init__()
    slow.feed(text)
    assert slow.finish() == message


def test_bad_input_is_a_message_not_an_exception():
    parser = ovs_json.Parser()
    parser.feed('"a string"')
    assert parser.is_done() and isinstance(parser.finish(), str)
    parser = ovs_json.Parser()
    parser.feed('{"a": 1,}')
    assert "invalid JSON-RPC message" in parser.finish()
    parser = ovs_json.Parser()
    parser.feed('{"a": ')
    assert not parser.is_done() and parser.finish() == "unexpected end of input"
    whole = ovs_json.Parser(check_trailer=True)
    whole.feed('{"a": 1} x')
    assert whole.finish() == "trailing garbage at end of input"


def test_installed_python_ovs_uses_it():
    assert ovs_json.install()
    assert ovs_json.install()                      # idempotent
    assert isinstance(ovs.json.Parser(), ovs_json.Parser)
    assert ovs.json.from_string('{"b": ["x\\"}"]}') == {"b": ['x"}']}
