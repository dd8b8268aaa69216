"""The `[[webhooks]]` endpoints of the config: validated here, so a typo is an error at start-up, not a lost CRM.

    [[webhooks]]
    url = "https://crm.example.com/hooks/callboard"
    events = ["call.completed", "customer.note_added", "agent.state_changed"]
    secret_env = "CRM_WEBHOOK_SECRET"      # the env var that holds the whsec_... secret
    name = "crm"                           # optional: the metrics label and delivery-id prefix (default: host)

Endpoints must be https, except on loopback (a receiver on the same machine, and the tests). The secret
itself never sits in the config file: `secret_env` names the environment variable holding it (see
resolve_secrets for what happens when it is missing).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

EVENTS = ("call.completed", "customer.note_added", "agent.state_changed")
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_KEYS = {"url", "events", "secret_env", "name"}
MAX_ENDPOINTS = 20  # each endpoint is a worker task and a metrics label: a bounded number of each


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    url: str
    events: tuple[str, ...]
    secret_env: str


class WebhookConfigError(ValueError):
    """(key path, English problem); callboard/config.py turns it into a ConfigError naming the file."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_webhooks(raw: Any) -> tuple[Endpoint, ...]:
    """`[[webhooks]]` tables -> Endpoints; raises WebhookConfigError naming the key."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        raise WebhookConfigError("webhooks", "must be an array of tables ([[webhooks]])")
    if len(raw) > MAX_ENDPOINTS:
        raise WebhookConfigError("webhooks", f"at most {MAX_ENDPOINTS} endpoints")
    out: list[Endpoint] = []
    for i, item in enumerate(raw):
        where = f"webhooks[{i}]"
        for key in item:
            if key not in _KEYS:
                raise WebhookConfigError(f"{where}.{key}", f"unknown key (allowed: {', '.join(sorted(_KEYS))})")
        url = item.get("url")
        if not isinstance(url, str) or not url.strip():
            raise WebhookConfigError(f"{where}.url", "is required: the endpoint's URL")
        parts = urlsplit(url.strip())
        try:
            host = parts.hostname or ""
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise WebhookConfigError(f"{where}.url", f"{url!r} is not a valid URL") from None
        if not host:
            raise WebhookConfigError(f"{where}.url", f"{url!r} is not a valid URL (no host)")
        if parts.scheme == "http" and not is_loopback(host):
            raise WebhookConfigError(f"{where}.url", "must be https:// (plain http only on loopback)")
        if parts.scheme not in ("https", "http"):
            raise WebhookConfigError(f"{where}.url", "must be an https:// URL")
        events = item.get("events", list(EVENTS))
        if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
            raise WebhookConfigError(f"{where}.events", "must be a non-empty list of event types")
        for event in events:
            if event not in EVENTS:
                raise WebhookConfigError(f"{where}.events", f"unknown event {event!r} (known: {', '.join(EVENTS)})")
        secret_env = item.get("secret_env")
        if not isinstance(secret_env, str) or not ENV_RE.match(secret_env):
            raise WebhookConfigError(f"{where}.secret_env", "is required: the name of the environment variable "
                                                            "holding the whsec_... secret")
        name = item.get("name", host)
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise WebhookConfigError(f"{where}.name", "may only use letters, digits and _ . - (at most 64)")
        if any(e.name == name for e in out):
            raise WebhookConfigError(f"{where}.name", f"duplicate endpoint name {name!r} (set name = \"...\")")
        out.append(Endpoint(name=name, url=url.strip(), events=tuple(dict.fromkeys(events)), secret_env=secret_env))
    return tuple(out)


def resolve_secrets(endpoints: tuple[Endpoint, ...], env: Mapping[str, str] | None = None
                    ) -> tuple[dict[str, str], dict[str, str]]:
    """({endpoint name: secret}, {endpoint name: English problem}) from the environment.

    A missing or malformed secret does not stop the service (presence and calls matter more): that endpoint's
    deliveries wait, durable, until it is fixed and the service restarted, and /readyz names the problem.
    """
    from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

    env = os.environ if env is None else env
    secrets: dict[str, str] = {}
    problems: dict[str, str] = {}
    for endpoint in endpoints:
        value = env.get(endpoint.secret_env, "").strip()
        if not value:
            problems[endpoint.name] = f"webhook endpoint {endpoint.name}: environment variable {endpoint.secret_env} is not set"
            continue
        try:
            Webhook(value)
        except (EmptyWebhookSecretError, ValueError):  # binascii.Error is a ValueError
            problems[endpoint.name] = (f"webhook endpoint {endpoint.name}: {endpoint.secret_env} is not a Standard "
                                       "Webhooks secret (whsec_ followed by base64)")
            continue
        secrets[endpoint.name] = value
    return secrets, problems
