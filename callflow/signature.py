"""Twilio request signatures, as pure functions: rebuild the URL Twilio signed, then check the header.

Twilio signs the full URL it requested (scheme, host, path and query) plus the sorted POST parameters. Behind
a proxy the URL our server sees is not that URL, so it is rebuilt from PUBLIC_URL (the base Twilio calls)
and the request's own path and query. twilio's RequestValidator tries the URL with and without the default
port, which covers Twilio's inconsistent port handling; it always computes both HMACs, so the URL exactly as
rebuilt is tried first (one HMAC: the usual case) and the library's two variants only when that fails.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from twilio.request_validator import RequestValidator, get_signature_algorithm

SIGNATURE_HEADER = "X-Twilio-Signature"
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"

# Reasons a request is refused; they are the `reason` label of webhook_rejected and never name a secret.
MISSING_SIGNATURE = "missing_signature"
BAD_SIGNATURE = "bad_signature"


def signed_url(public_url: str | None, path_qs: str, request_url: str) -> str:
    """The URL Twilio signed: PUBLIC_URL + path + query, or the request's own URL when PUBLIC_URL is unset.

    PUBLIC_URL may carry a path prefix (`https://example.com/callboard`) when a proxy mounts the service
    under one and strips it; the prefix is kept and the app's path appended.
    """
    if not public_url:
        return request_url
    return public_url.rstrip("/") + path_qs


def check_signature(auth_token: str, url: str, params: Mapping[str, Any], signature: str | None,
                    settings_header: str | None = None) -> str | None:
    """None when the signature is valid, else the refusal reason (MISSING_SIGNATURE or BAD_SIGNATURE)."""
    if not signature:
        return MISSING_SIGNATURE
    algorithm = get_signature_algorithm(settings_header)
    validator = _validator(auth_token)
    try:
        exact = validator.compute_signature(url, params, algorithm)
    except ValueError:  # an algorithm twilio does not know: validate() below logs it and refuses
        exact = None
    if exact is not None and hmac.compare_digest(exact.encode(), signature.encode()):
        return None
    if validator.validate(url, params, signature, algorithm=algorithm):  # the URL with / without the port
        return None
    return BAD_SIGNATURE


@lru_cache(maxsize=4)
def _validator(auth_token: str) -> RequestValidator:
    """One validator per token (it only holds the encoded key)."""
    return RequestValidator(auth_token)


def sign(auth_token: str, url: str, params: Mapping[str, Any]) -> str:
    """The signature Twilio would send for this URL and these parameters (tests and the simulator use it)."""
    return RequestValidator(auth_token).compute_signature(url, params)
