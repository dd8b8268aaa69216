"""wallboard/messages.parse_json: its orjson fast path gives exactly what json.loads gives, or steps aside."""

from __future__ import annotations

import json

import pytest

from wallboard.messages import MAX_NESTING, WireError, decode, parse_json

ACCEPTED = [
    '{"type":"set_state","state":"away","reason":"lunch"}',
    '{"type":"set_state","state":"away","seq":9007199254740991}',
    '{"type":"set_state","seq":1000000000000000000000000000000}',  # orjson: a float; json.loads: this int
    '{"type":"set_state","seq":-18446744073709551617}',
    '{"type":"x","a":1.5,"b":1e400}',  # json.loads: inf; orjson refuses
    '{"type":"x","a":NaN}',
    '{"type":"x","a":"\\ud800"}',  # a lone surrogate: json.loads keeps it, orjson refuses
    '{"type":"x","a":[1,{"b":null}],"c":{"d":true}}',
    '{"type":"x","type":"y"}',  # a repeated key: the last one wins in both
    ' \t{"type":"x"}\n',
    '{"type":"x","a":"\\u0000\\u2028é"}',
    '[1,2]',
    '"text"',
    b'{"type":"set_state","state":"away","reason":"lunch"}',
    '{"type":"set_state","state":"away"}'.encode("utf-16"),  # json.loads detects UTF-16; orjson does not
]

REFUSED = ['{"a":1} x', "{'a':1}", '{"a":01}', '{"a":1,}', '\ufeff{}', '{"a":"\x01"}', b'{"a":"\xff"}', "", "nul"]


@pytest.mark.parametrize("text", ACCEPTED)
def test_the_fast_path_decodes_exactly_as_json_loads(text: str | bytes) -> None:
    got, want = parse_json(text), json.loads(text)
    assert got == want or (json.dumps(got) == json.dumps(want))  # NaN != NaN: compare their spelling
    assert [type(v) for v in (got.values() if isinstance(got, dict) else [])] == \
        [type(v) for v in (want.values() if isinstance(want, dict) else [])]


@pytest.mark.parametrize("text", REFUSED)
def test_what_json_loads_refuses_is_a_bad_message(text: str | bytes) -> None:
    with pytest.raises(WireError) as caught:
        parse_json(text)
    assert caught.value.code == "bad_message" and "not valid JSON" in caught.value.message


def test_nesting_is_still_held_to_the_limit() -> None:
    ok = "[" * MAX_NESTING + "]" * MAX_NESTING
    assert parse_json(ok) is not None
    for deep in ("[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1), "[" * 100_000 + "]" * 100_000):
        with pytest.raises(WireError) as caught:
            parse_json(deep)
        assert "nested too deeply" in caught.value.message


def test_a_big_seq_keeps_its_integer_for_the_bad_seq_answer() -> None:
    msg = decode('{"type":"set_state","state":"away","seq":100000000000000000000}')
    assert msg["seq"] == 10**20 and type(msg["seq"]) is int


def test_msgpack_frames_are_held_to_the_same_nesting_limit() -> None:
    import msgpack

    flat = {"type": "set_state", "state": "away", "reason": "lunch", "seq": 3, "x": None, "y": True}
    assert decode(msgpack.packb(flat)) == flat
    nested: object = {"type": "x"}
    for _ in range(MAX_NESTING):
        nested = {"type": "x", "in": nested}
    with pytest.raises(WireError) as caught:
        decode(msgpack.packb(nested))
    assert "nested too deeply" in caught.value.message
    with pytest.raises(WireError):
        decode(msgpack.packb([1, 2]))  # not an object with a "type"
