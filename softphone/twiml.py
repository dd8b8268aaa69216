"""TwiML of the conference bridge, pure: arguments in, XML text out (twilio's VoiceResponse, never concatenation)."""

from __future__ import annotations

from twilio.twiml.voice_response import Dial, VoiceResponse

from callflow import twiml as callflow_twiml

# The conference events we follow: who joined or left (the bridge, the caller gone) and hold changes.
STATUS_EVENTS = "join leave hold"


def conference(name: str, region: str, *, status_url: str, end_on_exit: bool, wait_url: str | None = None,
               label: str | None = None) -> str:
    """Join the conference `name` (the caller's CallSid) whose media is mixed in `region`.

    The caller ends the conference when it leaves (nobody stays on a call without a customer); agents do
    not, so a transfer can hand the caller from one agent to the next.
    """
    response = VoiceResponse()
    dial = Dial()
    options: dict[str, object] = {
        "region": region, "status_callback": status_url, "status_callback_method": "POST",
        "status_callback_event": STATUS_EVENTS, "end_conference_on_exit": end_on_exit,
        "start_conference_on_enter": True, "beep": False,
    }
    if wait_url is not None:
        options["wait_url"] = wait_url
        options["wait_method"] = "POST"
    if label:
        options["participant_label"] = label
    dial.conference(name, **options)
    response.append(dial)
    return str(response)


def hold_music(url: str | None, pause_s: int = 20) -> str:
    """The caller on hold: the center's hold music, else silence (Twilio loops the HoldUrl document)."""
    response = VoiceResponse()
    if url:
        response.play(url, loop=0)
    else:
        response.pause(length=pause_s)
    return str(response)


def requeue(queue: str, voice: callflow_twiml.Voice, action_url: str, wait_url: str) -> str:
    """A transferred caller goes back into a queue: a short notice, then <Enqueue> (no second greeting)."""
    return callflow_twiml.enqueue(queue, "Please hold while we transfer your call.", voice.english(),
                                  action_url=action_url, wait_url=wait_url)
