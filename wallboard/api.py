"""HTTP API: pages, snapshot, state changes, voice token, metrics and health. Thin views over Services."""

from __future__ import annotations

import asyncio

from aiohttp import web
from redis.exceptions import RedisError

from callboard.assets import static_dir
from callboard.web import JSON_HEADERS, page
from callboard.web import claims as _claims
from callboard.web import json_error as _json_error
from callboard.web import services as _services
from presence.rules import SET, Intent, validate_seq, validate_set
from wallboard import messages


async def index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/wallboard")


async def snapshot(request: web.Request) -> web.StreamResponse:
    claims = _claims(request, "wallboard", "supervisor")
    services = _services(request)
    services.hub.flush_pending()  # snapshots are the published state; this one is read once, never followed
    body = services.hub.snapshot_json(messages.topics_for(claims, services.config))
    return web.Response(text=body, content_type="application/json", headers=JSON_HEADERS)


async def set_state(request: web.Request) -> web.StreamResponse:
    claims = _claims(request, "agent", "supervisor")
    services = _services(request)
    agent_id = request.match_info["agent_id"]
    if services.config.agent(agent_id) is None:
        return _json_error(404, f"no agent {agent_id!r} in this center", "unknown_agent")
    if claims.role == "agent" and claims.sub != agent_id:
        return _json_error(403, "agents may only change their own state", "forbidden")
    try:
        body = messages.parse_json(await request.read())
    except messages.WireError as exc:
        return _json_error(400, f'{exc.message}; the body must be JSON like {{"state": "away", "reason": "lunch"}}',
                           "bad_message")
    if not isinstance(body, dict):
        return _json_error(400, 'the body must be a JSON object like {"state": "away"}', "bad_message")
    state, reason, seq = body.get("state"), body.get("reason"), body.get("seq")
    code = validate_set(claims.role, state, reason)
    if code:
        return _json_error(400, messages.rejection(code)["message"], code)
    if validate_seq(seq):
        return _json_error(400, messages.rejection("bad_seq")["message"], "bad_message")
    result = await services.batcher.submit(agent_id, Intent(kind=SET, actor=claims.role, state=state, reason=reason, seq=seq))
    if result:
        return _json_error(409, messages.rejection(result)["message"], result)
    record = await services.presence.read_agent(agent_id)
    return web.json_response({"agent": agent_id, **record.public()}, headers=JSON_HEADERS)


async def voice_token(request: web.Request) -> web.StreamResponse:
    claims = _claims(request, "agent", "supervisor")
    services = _services(request)
    s = services.settings
    if not (s.twilio_account_sid and s.twilio_api_key and s.twilio_api_secret and s.twilio_twiml_app_sid):
        return _json_error(503, "Twilio voice is not configured on this server (TWILIO_ACCOUNT_SID, TWILIO_API_KEY, "
                                "TWILIO_API_SECRET, TWILIO_TWIML_APP_SID)", "voice_unavailable")
    from callboard import voice_sdk

    sdk_url = services.config.server.voice_sdk_url or (voice_sdk.SDK_PATH if voice_sdk.installed(s.data_dir) else None)
    if not sdk_url:
        return _json_error(503, "the Twilio Voice SDK is not installed (run `callboard voice-sdk install`, "
                                "or set [server] voice_sdk_url)", "voice_unavailable")
    from twilio.jwt.access_token import AccessToken
    from twilio.jwt.access_token.grants import VoiceGrant

    # Supervisors get their own identity space so that a supervisor named like an agent never rings that
    # agent's softphone (the monitor adds `client:supervisor:<sub>` as a participant).
    identity = claims.sub if claims.role == "agent" else f"supervisor:{claims.sub}"
    token = AccessToken(s.twilio_account_sid, s.twilio_api_key, s.twilio_api_secret, identity=identity, ttl=3600)
    token.add_grant(VoiceGrant(outgoing_application_sid=s.twilio_twiml_app_sid, incoming_allow=True))
    return web.json_response({"token": token.to_jwt(), "identity": identity, "sdk_url": sdk_url,
                              "ttl_s": 3600}, headers=JSON_HEADERS)


async def voice_sdk_file(request: web.Request) -> web.StreamResponse:
    """The Voice SDK installed by `callboard voice-sdk install`, at a stable path."""
    from callboard import voice_sdk

    found = voice_sdk.installed(_services(request).settings.data_dir)
    if found is None:
        return web.Response(status=404, text="The Twilio Voice SDK is not installed: run `callboard voice-sdk install`.\n")
    return web.FileResponse(found.path, headers={"Content-Type": "text/javascript; charset=utf-8",
                                                 "Cache-Control": "no-cache"})


async def metrics(request: web.Request) -> web.StreamResponse:
    services = _services(request)
    return web.Response(body=await services.metrics.render_off_loop(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.StreamResponse:
    services = _services(request)
    problems = services.readiness_problems()
    try:
        await asyncio.wait_for(services.redis.ping(), timeout=1.0)
    except (TimeoutError, RedisError, OSError) as exc:
        problems.append(f"Redis unreachable ({type(exc).__name__})")
    if problems:
        return web.Response(status=503, text="not ready: " + "; ".join(problems) + "\n")
    return web.Response(text="ready\n")


def routes() -> list[web.AbstractRouteDef]:
    from wallboard.ws import websocket_handler

    return [
        web.get("/", index),
        web.get("/wallboard", page("wallboard.html")),
        web.get("/agent", page("agent.html")),
        web.static("/static", str(static_dir())),
        web.get("/ws", websocket_handler),
        web.get("/api/snapshot", snapshot),
        web.post("/api/agents/{agent_id}/state", set_state),
        web.get("/api/voice-token", voice_token),
        web.get("/voice-sdk/twilio.min.js", voice_sdk_file),
        web.get("/metrics", metrics),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
    ]
