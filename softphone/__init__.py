"""The agent's softphone on the server side: call controls, the conference bridge, the supervisor monitor.

Its own room rather than part of callflow/ because a control is not a Twilio webhook: it starts from a
person's button (a bearer-token API call), makes one Twilio REST request, and records what Twilio did; the
few webhooks it adds exist only for the conference it creates. callflow/ stays the queue's webhooks and
their statistics; this room reuses its call hash, its signature checks and its call events.
"""

from __future__ import annotations

from aiohttp import web

from callboard.services import Services

CONTROLS_KEY = web.AppKey("softphone_controls", object)


def install(app: web.Application, services: Services) -> None:
    """Add the controls' routes to an instance's app, and close the Twilio client with it."""
    from softphone.controls import Controls
    from softphone.rest import TwilioRest

    rest = TwilioRest(services.settings, getattr(services, "twilio_rest", None))
    controls = Controls(config=services.config, redis=services.redis, presence=services.presence,
                        clock=services.clock, flow=services.callflow, rest=rest, secret=services.secret,
                        public_url=services.settings.public_url)
    app[CONTROLS_KEY] = controls
    if controls.conference_mode and services.routing is not None:
        # a transfer to an agent is a routing offer; its Accept rings the agent into the call's conference
        services.routing.transfer_accepted = controls.transfer_accepted
        services.routing.transfer_orphaned = controls.transfer_orphaned
        services.routing.transfer_stray = controls.transfer_stray
    app.add_routes(controls.routes())

    async def close(app: web.Application) -> None:
        await controls.close()
        await rest.close()

    app.on_cleanup.append(close)
