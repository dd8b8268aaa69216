"""Kept for one release: the conference emulator is now part of the one Twilio emulator, simulator/twilio_api.py.

`ConferenceEmulator(account_sid, auth_token)` is `TwilioEmulator` (same constructor, same methods:
add_call, run_twiml, answer, end_call, conference_named, settle, softphones, fail_next, requests), and the
old model names are aliases of the emulator's own. New code imports from simulator.twilio_api.
"""

from __future__ import annotations

from simulator.twilio_api import ApiError, EmuCall, EmuConference, EmuParticipant, TwilioEmulator, new_sid

ConferenceEmulator = TwilioEmulator
EmCall = EmuCall
EmConference = EmuConference
EmParticipant = EmuParticipant

__all__ = ["ApiError", "ConferenceEmulator", "EmCall", "EmConference", "EmParticipant", "new_sid"]
