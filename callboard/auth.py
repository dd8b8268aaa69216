"""Bearer tokens: HS256 JWTs with `sub`, `role`, `exp` and optional `queues`/`teams` scopes.

Checking a token is on every websocket hello and every API request, and PyJWT 2.15's decode costs 80-200
microseconds (it tests each character of each segment in a Python generator, and sniffs the secret for
PEM, SSH, DER and JWK shapes on every call): 12 % of the server's samples in a connect storm
(docs/benchmarks.md, "Third pass on the connect storm"). So `verify_token` first tries a fast path that
accepts only the plain tokens `issue_token` makes, and only where PyJWT would accept them too: the exact
header PyJWT writes for HS256, a signature equal to the HMAC-SHA256 of the secret (PyJWT's own refusal
of PEM, SSH, DER or JWK-shaped secrets checked once per secret), canonical base64url, a JSON object of
our claims alone with an integer `exp` in the future and an integer `iat` in the past. Anything else —
a forged, tampered, expired or odd token, another algorithm, padding, extra claims — goes to PyJWT,
which decides and words the refusal exactly as before: the fast path never refuses, it only accepts less.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass

import jwt
from jwt.algorithms import HMACAlgorithm

ROLES = ("agent", "supervisor", "wallboard")
_TTL_RE = re.compile(r"^(\d+)([smhd]?)$")
_TTL_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class TokenError(Exception):
    """A token that is missing, malformed, forged or expired. The message is safe to show."""


@dataclass(frozen=True, slots=True)
class Claims:
    sub: str
    role: str
    exp: int
    queues: tuple[str, ...] | None = None
    teams: tuple[str, ...] | None = None


def parse_ttl(text: str) -> int:
    """'12h' -> 43200 seconds; accepts s, m, h, d or a bare number of seconds."""
    match = _TTL_RE.match(text.strip())
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"bad TTL {text!r}: use a positive number with s, m, h or d, e.g. 12h")
    return int(match.group(1)) * _TTL_UNIT_S[match.group(2)]


def issue_token(
    secret: str,
    sub: str,
    role: str,
    ttl_s: int = 12 * 3600,
    *,
    queues: list[str] | None = None,
    teams: list[str] | None = None,
    now_s: float | None = None,
) -> str:
    """Sign a token for `sub` in `role`, valid for `ttl_s` seconds."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    if not sub:
        raise ValueError("the token subject must not be empty")
    now = time.time() if now_s is None else now_s
    payload: dict[str, object] = {"sub": sub, "role": role, "exp": int(now + ttl_s), "iat": int(now)}
    if queues:
        payload["queues"] = list(queues)
    if teams:
        payload["teams"] = list(teams)
    return jwt.encode(payload, secret, algorithm="HS256")


# The first segment of every token issue_token signs: PyJWT's HS256 header, keys sorted, no spaces.
_HS256_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
_OUR_CLAIMS = frozenset(("sub", "role", "exp", "iat", "queues", "teams"))


@functools.lru_cache(maxsize=8)
def _hmac_key(secret: str) -> bytes | None:
    """The secret as PyJWT's HS256 uses it, or None where PyJWT refuses it as a key (then PyJWT decides)."""
    try:
        return HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
    except jwt.InvalidKeyError:
        return None


def _plain_payload(secret: str, token: str) -> dict[str, object] | None:
    """The claims of a token PyJWT would accept as well, when it is one of the plain ones; else None."""
    header, dot, rest = token.partition(".")
    if header != _HS256_HEADER or not dot:
        return None
    body, dot, signature = rest.partition(".")
    key = _hmac_key(secret)
    if not dot or key is None or not token.isascii():
        return None
    mac = hmac.digest(key, f"{header}.{body}".encode(), "sha256")
    if not hmac.compare_digest(base64.urlsafe_b64encode(mac).rstrip(b"="), signature.encode()):
        return None
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        payload = json.loads(raw)
    except (ValueError, binascii.Error, RecursionError):
        return None
    # canonical base64url only (the alphabet, no padding), as PyJWT requires
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != body.encode() or not isinstance(payload, dict):
        return None
    now = time.time()
    exp, iat = payload.get("exp"), payload.get("iat", 0)
    # PyJWT: expired when exp <= now, not yet valid when iat > now (its `now` is read after this one)
    if (not _OUR_CLAIMS.issuperset(payload) or type(exp) is not int or exp <= now
            or type(iat) is not int or iat > now or not isinstance(payload.get("sub"), str)):
        return None
    return payload


def verify_token(secret: str, token: object) -> Claims:
    """Check signature, expiry and shape; raise TokenError with an English reason."""
    if not isinstance(token, str) or not token:
        raise TokenError("missing token")
    payload = _plain_payload(secret, token)
    if payload is None:
        try:
            payload = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["sub", "exp"]})
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.InvalidTokenError:
            raise TokenError("invalid token") from None
    role = payload.get("role")
    sub = payload.get("sub")
    if role not in ROLES or not isinstance(sub, str) or not sub:
        raise TokenError("invalid token")
    return Claims(
        sub=sub,
        role=role,
        exp=int(payload["exp"]),
        queues=_str_tuple(payload.get("queues")),
        teams=_str_tuple(payload.get("teams")),
    )


class VerifiedTokens:
    """`verify_token` with a memory: a token verified before is not verified again until it expires.

    A screen or console that reconnects (a network blip, a 4429, another instance draining) presents the
    same token, and even the fast path of a check costs 15-25 microseconds of the event loop (PyJWT's
    decode 80-200); a storm of reconnects then pays it once per token. Only verified tokens are kept (a
    forged or malformed one is checked every time), keyed by the SHA-256 of the token so that the cache
    holds 32 bytes per entry and never the bearer secret itself; expiry is checked on every use, exactly as
    PyJWT does (exp <= now: expired).
    At most `size` tokens are kept, the oldest verified dropped first.
    """

    def __init__(self, secret: str, size: int = 20_000) -> None:
        self.secret = secret
        self.size = size
        self._known: dict[bytes, Claims] = {}
        self.hits = 0

    def verify(self, token: object) -> Claims:
        if not isinstance(token, str) or not token:
            raise TokenError("missing token")
        key = hashlib.sha256(token.encode()).digest()
        claims = self._known.get(key)
        if claims is not None:
            if claims.exp > time.time():
                self.hits += 1
                return claims
            del self._known[key]
            raise TokenError("token expired")
        claims = verify_token(self.secret, token)
        if len(self._known) >= self.size:
            del self._known[next(iter(self._known))]
        self._known[key] = claims
        return claims


class AuthRefused(Exception):
    """A request's credentials do not allow it: `status` 401 (code bad_token) or 403 (code forbidden)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def claims_from_header(secret: str, authorization: str, roles: tuple[str, ...], *,
                       forbidden: str | None = None) -> Claims:
    """The Claims of an `Authorization: Bearer <token>` header whose role is one of `roles`, else AuthRefused.

    The one check behind every HTTP route; each room turns AuthRefused into its own error body. `forbidden`
    replaces the 403 message (a template with {role} and {needs}).
    """
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthRefused(401, "bad_token", "missing bearer token (Authorization: Bearer <token>)")
    try:
        claims = verify_token(secret, token.strip())
    except TokenError as exc:
        raise AuthRefused(401, "bad_token", str(exc)) from None
    if claims.role not in roles:
        template = forbidden or "a {role} token cannot do this (needs {needs})"
        raise AuthRefused(403, "forbidden", template.format(role=claims.role, needs=" or ".join(roles)))
    return claims


def _str_tuple(value: object) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None
