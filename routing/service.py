"""Wiring the router into one instance (offer mode): built from Services, started and stopped with the app."""

from __future__ import annotations

from callboard.services import Services
from routing.router import Router
from routing.twilio_rest import TwilioRest


def build_router(services: Services) -> Router:
    """The instance's router and its Twilio REST client (TWILIO_API_URL, credentials from Settings)."""
    return Router(config=services.config, redis=services.redis, presence=services.presence,
                  agents=lambda: services.mirror.agents, clock=services.clock,
                  rest=services.twilio_rest or TwilioRest.from_settings(services.settings), public_url=services.settings.public_url,
                  registry=services.metrics.registry, on_redis_error=services.count_redis_error)
