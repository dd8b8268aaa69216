"""TwiML builders, pure: arguments in, XML text out. Built with twilio's VoiceResponse, never by concatenation.

Spoken system phrases (positions, apologies, errors) are English. They are spoken in the queue's voice when
that voice speaks English, else in ENGLISH_VOICE, so an English sentence is never read by a Japanese voice.
Greetings are the configured text, spoken in the queue's (else the center's) language and voice.

The builders every call passes through are memoized (functools.lru_cache, bounded): they are pure, their
arguments are a few strings per queue, agent and announced position, and building an ElementTree per request
was a measurable part of a webhook's CPU (docs/benchmarks.md, "Signed webhooks: the cause").
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from twilio.twiml.voice_response import Dial, VoiceResponse

ENGLISH_LANGUAGE = "en-US"
ENGLISH_VOICE = "Polly.Joanna"
MAX_PAUSE_S = 30  # the wait loop re-asks at least this often, so position announcements stay fresh


@dataclass(frozen=True, slots=True)
class Voice:
    language: str
    voice: str

    def english(self) -> Voice:
        """This voice when it speaks English, else the default English voice."""
        if self.language.lower().startswith("en"):
            return self
        return Voice(ENGLISH_LANGUAGE, ENGLISH_VOICE)


ENGLISH = Voice(ENGLISH_LANGUAGE, ENGLISH_VOICE)
CACHED = 4096  # distinct documents kept per builder (a few per queue, agent and position)


def _say(response: VoiceResponse, text: str, voice: Voice) -> None:
    response.say(text, voice=voice.voice, language=voice.language)


@lru_cache(maxsize=CACHED)
def enqueue(queue: str, greeting: str, voice: Voice, action_url: str, wait_url: str) -> str:
    """Greet the caller and put the call in the queue; queue-result and wait are absolute POST URLs."""
    response = VoiceResponse()
    if greeting:
        _say(response, greeting, voice)
    response.enqueue(queue, action=action_url, method="POST", wait_url=wait_url, wait_url_method="POST")
    return str(response)


@lru_cache(maxsize=CACHED)
def unstaffed(voice: Voice) -> str:
    """Nobody of the queue is signed in: say so and hang up."""
    response = VoiceResponse()
    _say(response, "We are sorry, no agent is available to take your call right now. "
                   "Please call again later. Goodbye.", voice.english())
    response.hangup()
    return str(response)


@lru_cache(maxsize=CACHED)
def wait(position: int | None, announce: bool, voice: Voice, hold_music_url: str | None, pause_s: int,
         next_url: str) -> str:
    """One turn of the hold loop: maybe the position, then music or a pause, then back to next_url.

    next_url carries the announced position and time, so the next turn knows whether to speak again
    without any server-side state.
    """
    response = VoiceResponse()
    if announce and position:
        text = ("You are next in line." if position == 1
                else f"You are number {position} in line. Thank you for your patience.")
        _say(response, text, voice.english())
    if hold_music_url:
        response.play(hold_music_url)
    else:
        response.pause(length=max(1, min(pause_s, MAX_PAUSE_S)))
    response.redirect(next_url, method="POST")
    return str(response)


@lru_cache(maxsize=CACHED)
def dial_queue(queue: str, bridge_url: str) -> str:
    """The agent takes the next caller of `queue`; Twilio asks bridge_url just before connecting them."""
    response = VoiceResponse()
    dial = Dial()
    dial.queue(queue, url=bridge_url, method="POST")
    response.append(dial)
    return str(response)


def dial_number(number: str, caller_id: str | None) -> str:
    """An agent's outbound call to a phone number, shown with the center's caller id."""
    response = VoiceResponse()
    dial = Dial(caller_id=caller_id) if caller_id else Dial()
    dial.number(number)
    response.append(dial)
    return str(response)


@lru_cache(maxsize=CACHED)
def queue_result(outcome: str | None, voice: Voice) -> str:
    """What the caller hears after leaving the queue (after the agent hung up, for a bridged call)."""
    response = VoiceResponse()
    if outcome == "queue_full":
        _say(response, "We are sorry, all our lines are busy. Please call again later. Goodbye.", voice.english())
    elif outcome in ("error", "system_error", "other"):
        _say(response, "We are sorry, something went wrong. Please call again later. Goodbye.", voice.english())
    response.hangup()
    return str(response)


@lru_cache(maxsize=CACHED)
def spoken_error(message: str) -> str:
    """An English error for the person on the line, then hang up (e.g. an unknown agent)."""
    response = VoiceResponse()
    _say(response, message, ENGLISH)
    response.hangup()
    return str(response)


@lru_cache(maxsize=CACHED)
def empty() -> str:
    """A valid TwiML document that does nothing (bridge, status callbacks)."""
    return str(VoiceResponse())


def dial_client(agent: str, offer_id: str, bridge_url: str, action_url: str, ring_s: int) -> str:
    """Routing: ring the agent's softphone for an accepted offer; the offer id rides as a custom parameter.

    The Client's url is requested on the agent's leg when it answers (the bridge); the Dial's action when
    the dial ends, connected or not (dial-result).
    """
    response = VoiceResponse()
    dial = Dial(action=action_url, method="POST", timeout=ring_s)
    client = dial.client(url=bridge_url, method="POST")
    client.identity(agent)
    client.parameter(name="offer_id", value=offer_id)
    response.append(dial)
    return str(response)


@lru_cache(maxsize=CACHED)
def requeue(queue: str, voice: Voice, action_url: str, wait_url: str) -> str:
    """Routing: the dial to the agent did not connect; back into the queue (no greeting this time)."""
    response = VoiceResponse()
    _say(response, "Please hold, we are connecting you to the next available agent.", voice.english())
    response.enqueue(queue, action=action_url, method="POST", wait_url=wait_url, wait_url_method="POST")
    return str(response)


@lru_cache(maxsize=CACHED)
def hangup() -> str:
    response = VoiceResponse()
    response.hangup()
    return str(response)
