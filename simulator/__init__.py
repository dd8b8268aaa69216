"""The simulator: Twilio's side and the softphones' side of a contact center, as a client of the contract.

It is not part of the service: `run.py` drives a running callboard with signed webhooks and real websocket
agents along a pure, seeded plan (`plan.py`). Nothing under callboard/, presence/, callflow/ or wallboard/
imports it; the CLI's `simulate` and `demo` commands load it lazily.
"""
