"""The softphone's pure parts: config validation of the bridge keys, control bodies, monitor options, TwiML."""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree as ET

import pytest

from callboard.config import ConfigError
from softphone import rules
from softphone import twiml as sp_twiml
from softphone.rules import ControlError
from tests.conftest import make_config


def test_bridge_keys_default_to_the_queue_bridge() -> None:
    center = make_config().center
    assert (center.bridge, center.conference_region) == ("queue", "us1")
    assert center.dispositions == ("resolved", "follow-up", "escalated", "wrong number")
    conf = make_config(center={"bridge": "conference", "conference_region": "jp1", "dispositions": ["sold", "no sale"]})
    assert (conf.center.bridge, conf.center.conference_region, conf.center.dispositions) == (
        "conference", "jp1", ("sold", "no sale"))


@pytest.mark.parametrize("center, key, words", [
    ({"bridge": "dial"}, "center.bridge", "queue, conference"),
    ({"bridge": 3}, "center.bridge", "non-empty string"),
    ({"conference_region": "tokyo"}, "center.conference_region", "jp1"),
    ({"conference_region": "JP1"}, "center.conference_region", "not a Twilio region"),
    ({"dispositions": []}, "center.dispositions", "at least one"),
    ({"dispositions": ["ok", "ok"]}, "center.dispositions", "duplicate"),
    ({"dispositions": ["x" * 65]}, "center.dispositions", "1 to 64"),
    ({"dispositions": [" "]}, "center.dispositions", "1 to 64"),
    ({"dispositions": "resolved"}, "center.dispositions", "list of strings"),
])
def test_bad_bridge_keys_are_config_errors_naming_the_key(center: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_config(center=center)
    assert err.value.key == key and words in str(err.value)


def test_conference_only_controls_are_409_in_queue_mode() -> None:
    for control in ("hold", "transfer", "monitor"):
        with pytest.raises(ControlError) as err:
            rules.check_mode(control, "queue")
        assert err.value.status == 409 and "conference" in str(err.value)
        rules.check_mode(control, "conference")
    rules.check_mode("hangup", "queue")
    rules.check_mode("wrap-up", "queue")


@pytest.mark.parametrize("body, field", [
    ({}, "agent"), ({"agent": "alice", "queue": "support"}, "agent"), ({"agent": "zed"}, "agent"),
    ({"agent": ["alice"]}, "agent"), ({"queue": "nope"}, "queue"), ({"queue": "support", "warm": True}, "warm"),
    ({"agent": "bob", "warm": "yes"}, "warm"), ([], None), ("bob", None),
])
def test_transfer_bodies_are_checked(body: Any, field: str | None) -> None:
    with pytest.raises(ControlError) as err:
        rules.transfer(body, make_config())
    assert err.value.status == 400 and err.value.field == field


def test_good_bodies() -> None:
    config = make_config()
    assert rules.transfer({"agent": "bob", "warm": True}, config) == rules.Transfer("bob", None, True)
    assert rules.transfer({"queue": "sales"}, config) == rules.Transfer(None, "sales", False)
    assert rules.hold_on({"on": False}) is False
    assert rules.monitor_mode({"mode": "barge"}) == "barge"
    assert rules.wrap_up({"disposition": "resolved", "note": None}, config) == ("resolved", "")
    for bad in ({"on": 1}, {"on": None}, {}):
        with pytest.raises(ControlError):
            rules.hold_on(bad)
    for sid in ("", "CA/../x", "CA" + "1" * 70, "CÄ12"):
        with pytest.raises(ControlError):
            rules.check_call_sid(sid)


def test_a_misspelt_field_is_refused_not_ignored() -> None:
    """{"agent": "bob", "wram": true} would otherwise be a cold transfer the agent did not ask for."""
    config = make_config()
    calls = [lambda b: rules.transfer(b, config), rules.hold_on, rules.monitor_mode,
             lambda b: rules.wrap_up(b, config), rules.no_fields]
    bodies = [{"agent": "bob", "wram": True}, {"on": True, "of": 1}, {"mode": "listen", "moed": "x"},
              {"disposition": "resolved", "notes": "typo"}, {"force": True}]
    for call, body in zip(calls, bodies, strict=True):
        with pytest.raises(ControlError) as err:
            call(body)
        bad = [k for k in body if k in ("wram", "of", "moed", "notes", "force")][0]
        assert (err.value.status, err.value.code, err.value.field) == (400, "unknown_field", bad)
        assert f"unknown field '{bad}'" in str(err.value)
    rules.no_fields({})
    rules.no_fields(None)


def test_monitor_options_per_mode() -> None:
    assert rules.monitor_options("listen", "CA1") == {"muted": True, "beep": "false"}
    assert rules.monitor_options("whisper", "CA1") == {"coaching": True, "call_sid_to_coach": "CA1", "beep": "false"}
    assert rules.monitor_options("barge", None) == {"beep": "false"}
    with pytest.raises(ControlError) as err:
        rules.monitor_options("whisper", None)
    assert err.value.status == 409


def test_conference_twiml() -> None:
    xml = sp_twiml.conference("CA123", "jp1", status_url="https://cb.example/x?call=CA123", end_on_exit=True,
                              wait_url="https://music.example/hold.mp3", label="caller")
    conf = ET.fromstring(xml).find("Dial/Conference")
    assert conf is not None and conf.text == "CA123"
    assert conf.attrib == {"region": "jp1", "statusCallback": "https://cb.example/x?call=CA123",
                           "statusCallbackMethod": "POST", "statusCallbackEvent": "join leave hold",
                           "endConferenceOnExit": "true", "startConferenceOnEnter": "true", "beep": "false",
                           "waitUrl": "https://music.example/hold.mp3", "waitMethod": "POST",
                           "participantLabel": "caller"}
    assert ET.fromstring(sp_twiml.hold_music(None)).find("Pause") is not None
    play = ET.fromstring(sp_twiml.hold_music("https://music.example/a.mp3")).find("Play")
    assert play is not None and play.get("loop") == "0"
