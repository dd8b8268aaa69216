"""The ceiling for webhooks.py: a trivial aiohttp app answering every /twilio/voice/<route> POST with small TwiML."""

from __future__ import annotations

import argparse

from aiohttp import web

TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response><Pause length="10"/></Response>'


async def voice(request: web.Request) -> web.Response:
    await request.post()  # read the form like a real handler would
    return web.Response(text=TWIML, content_type="text/xml")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    app = web.Application()
    app.router.add_post("/twilio/voice/{route}", voice)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
