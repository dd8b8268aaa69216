"""TwiML builders: valid XML from VoiceResponse with the attributes Twilio expects."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from callflow import twiml

JA = twiml.Voice("ja-JP", "Polly.Mizuki")
EN = twiml.Voice("en-GB", "Polly.Amy")


def parse(text: str) -> ET.Element:
    root = ET.fromstring(text)
    assert root.tag == "Response"
    return root


def test_enqueue_greets_in_the_queue_voice_and_points_to_absolute_urls() -> None:
    root = parse(twiml.enqueue("support", "Bonjour", JA, "https://x.test/twilio/voice/queue-result?queue=support",
                               "https://x.test/twilio/voice/wait?queue=support"))
    say, enqueue = list(root)
    assert (say.tag, say.text, say.get("language"), say.get("voice")) == ("Say", "Bonjour", "ja-JP", "Polly.Mizuki")
    assert enqueue.tag == "Enqueue" and enqueue.text == "support"
    assert enqueue.get("action") == "https://x.test/twilio/voice/queue-result?queue=support"
    assert enqueue.get("method") == "POST" and enqueue.get("waitUrlMethod") == "POST"
    assert enqueue.get("waitUrl") == "https://x.test/twilio/voice/wait?queue=support"


def test_unstaffed_says_english_in_an_english_voice_and_hangs_up() -> None:
    root = parse(twiml.unstaffed(JA))
    assert [e.tag for e in root] == ["Say", "Hangup"]
    assert root[0].get("language") == "en-US"
    root = parse(twiml.unstaffed(EN))
    assert root[0].get("voice") == "Polly.Amy"


def test_wait_announces_then_pauses_then_redirects() -> None:
    root = parse(twiml.wait(3, True, EN, None, 30, "https://x.test/twilio/voice/wait?queue=s&pos=3&at=0"))
    assert [e.tag for e in root] == ["Say", "Pause", "Redirect"]
    assert "number 3" in (root[0].text or "")
    assert root[1].get("length") == "30"
    assert root[2].get("method") == "POST"
    root = parse(twiml.wait(1, False, EN, "https://music.test/hold.mp3", 30, "https://x.test/w"))
    assert [e.tag for e in root] == ["Play", "Redirect"]
    assert root[0].text == "https://music.test/hold.mp3"
    assert parse(twiml.wait(1, True, EN, None, 500, "https://x.test/w"))[1].get("length") == str(twiml.MAX_PAUSE_S)


def test_dial_queue_and_number() -> None:
    root = parse(twiml.dial_queue("support", "https://x.test/twilio/voice/bridge?queue=support&agent=alice"))
    queue = root[0][0]
    assert (root[0].tag, queue.tag, queue.text) == ("Dial", "Queue", "support")
    assert queue.get("url") == "https://x.test/twilio/voice/bridge?queue=support&agent=alice"
    root = parse(twiml.dial_number("+15551234567", "+15550000000"))
    assert root[0].get("callerId") == "+15550000000" and root[0][0].text == "+15551234567"


def test_queue_result_messages_and_empty() -> None:
    assert [e.tag for e in parse(twiml.queue_result("queue_full", JA))] == ["Say", "Hangup"]
    assert [e.tag for e in parse(twiml.queue_result("abandoned", JA))] == ["Hangup"]
    assert [e.tag for e in parse(twiml.queue_result(None, JA))] == ["Hangup"]
    assert list(parse(twiml.empty())) == []
    assert [e.tag for e in parse(twiml.spoken_error("No."))] == ["Say", "Hangup"]
