"""Token checks: the fast path for plain tokens accepts only what PyJWT accepts, and refuses nothing itself."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest

from callboard.auth import (
    Claims,
    TokenError,
    VerifiedTokens,
    _plain_payload,
    _str_tuple,
    issue_token,
    verify_token,
)
from tests.conftest import SECRET


def pyjwt_verdict(secret: str, token: object) -> Claims | str:
    """What verify_token answered before the fast path: PyJWT decides everything (the reference)."""
    if not isinstance(token, str) or not token:
        return "missing token"
    try:
        payload = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["sub", "exp"]})
    except jwt.ExpiredSignatureError:
        return "token expired"
    except jwt.InvalidTokenError:
        return "invalid token"
    role, sub = payload.get("role"), payload.get("sub")
    if role not in ("agent", "supervisor", "wallboard") or not isinstance(sub, str) or not sub:
        return "invalid token"
    return Claims(sub=sub, role=role, exp=int(payload["exp"]), queues=_str_tuple(payload.get("queues")),
                  teams=_str_tuple(payload.get("teams")))


def verdict(secret: str, token: object) -> Claims | str:
    try:
        return verify_token(secret, token)
    except TokenError as exc:
        return str(exc)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(payload: dict[str, Any], *, secret: str = SECRET, alg: str = "HS256", headers: Any = None) -> str:
    return jwt.encode(payload, secret, algorithm=alg, headers=headers)


def hs256(secret: str, signing_input: str) -> str:
    return b64(hmac.digest(secret.encode(), signing_input.encode(), hashlib.sha256))


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "role": "agent", "exp": now + 600, "iat": now - 5, **extra}


def test_the_tokens_issue_token_signs_take_the_fast_path_with_pyjwts_answer() -> None:
    tokens = [issue_token(SECRET, "alice", "agent"), issue_token(SECRET, "wall", "wallboard", ttl_s=60),
              issue_token(SECRET, "sam", "supervisor", queues=["support"], teams=["sales", "support"])]
    for token in tokens:
        assert _plain_payload(SECRET, token) == jwt.decode(token, SECRET, algorithms=["HS256"])
        assert verify_token(SECRET, token) == pyjwt_verdict(SECRET, token)
    assert verify_token(SECRET, tokens[2]).queues == ("support",)


REFUSED: dict[str, object] = {
    "another secret": signed(claims(), secret="another-secret-0123456789abcdef0123456789"),
    "expired": signed(claims(exp=int(time.time()) - 1)),
    "expired now": signed(claims(exp=int(time.time()))),
    "no exp": signed({"sub": "alice", "role": "agent"}),
    "exp not a number": signed(claims(exp="soon")),
    "no sub": signed({"role": "agent", "exp": int(time.time()) + 600}),
    "sub not a string": signed(claims(sub=7)),
    "empty sub": signed(claims(sub="")),
    "unknown role": signed(claims(role="admin")),
    "issued in the future": signed(claims(iat=int(time.time()) + 600)),
    "iat not a number": signed(claims(iat="yesterday")),
    "not before the future": signed(claims(nbf=int(time.time()) + 600)),
    "an audience nobody asked for": signed(claims(aud="elsewhere")),
    "jti not a string": signed(claims(jti=5)),
    "HS512": signed(claims(), alg="HS512"),
    "HS384": signed(claims(), alg="HS384"),
    "alg none": jwt.encode(claims(), None, algorithm="none"),
    "alg none, our header's signature": issue_token(SECRET, "alice", "agent").rsplit(".", 1)[0] + ".",
    "a header naming none, signed": (lambda head: f"{head}.{hs256(SECRET, head)}")(
        b64(b'{"alg":"none","typ":"JWT"}') + "." + b64(json.dumps(claims()).encode())),
    "payload not an object": ".".join((b64(b'{"alg":"HS256","typ":"JWT"}'), b64(b"[1,2]"), "x")),
    "two segments": issue_token(SECRET, "alice", "agent").rsplit(".", 1)[0],
    "four segments": issue_token(SECRET, "alice", "agent") + ".e30",
    "garbage": "not-a-token",
    "empty": "",
    "not a string": 12345,
    "None": None,
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_every_token_pyjwt_refuses_is_refused_with_the_same_reason(case: str) -> None:
    token = REFUSED[case]
    before = pyjwt_verdict(SECRET, token)
    assert isinstance(before, str), f"{case}: PyJWT accepts it, the case is wrong"
    assert verdict(SECRET, token) == before


def test_a_tampered_payload_with_the_old_signature_is_refused() -> None:
    header, _, signature = issue_token(SECRET, "alice", "agent").split(".")
    payload = b64(json.dumps(claims(role="supervisor"), separators=(",", ":")).encode())
    token = f"{header}.{payload}.{signature}"
    assert verdict(SECRET, token) == pyjwt_verdict(SECRET, token) == "invalid token"


def test_every_one_character_change_of_a_token_gets_pyjwts_answer() -> None:
    token = issue_token(SECRET, "alice", "supervisor", queues=["support"])
    changed = 0
    for i in range(len(token)):
        for ch in "A_-.=+/ é":
            if token[i] == ch:
                continue
            for mutant in (token[:i] + ch + token[i + 1:], token[:i] + ch + token[i:], token[:i] + token[i + 1:]):
                assert verdict(SECRET, mutant) == pyjwt_verdict(SECRET, mutant), mutant
                changed += 1
    assert changed > 1000


def test_odd_tokens_pyjwt_accepts_are_accepted_by_way_of_pyjwt() -> None:
    for token in (signed(claims(exp=time.time() + 600)), signed(claims(exp=str(int(time.time()) + 600))),
                  signed(claims(nbf=int(time.time()) - 5)),
                  signed(claims(), headers={"kid": "k1"}), signed(claims(), headers={"typ": "at+jwt"})):
        assert _plain_payload(SECRET, token) is None
        assert isinstance(verdict(SECRET, token), Claims)
        assert verdict(SECRET, token) == pyjwt_verdict(SECRET, token)


def test_a_signed_payload_in_non_canonical_base64url_is_refused_as_pyjwt_refuses_it() -> None:
    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    body = json.dumps(claims(), separators=(",", ":")).encode()
    while len(body) % 3 == 0:  # leave spare bits in the last character
        body += b" "
    canonical = b64(body)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spare = alphabet[alphabet.index(canonical[-1]) + 1]  # same bytes once decoded, spare bits set
    for payload in (canonical[:-1] + spare, canonical + "=" * (-len(canonical) % 4), canonical.replace("", " ", 1)):
        token = f"{header}.{payload}.{hs256(SECRET, f'{header}.{payload}')}"
        assert _plain_payload(SECRET, token) is None
        assert verdict(SECRET, token) == pyjwt_verdict(SECRET, token)
    assert isinstance(verdict(SECRET, f"{header}.{canonical}.{hs256(SECRET, f'{header}.{canonical}')}"), Claims)


def test_padding_pyjwt_tolerates_is_still_accepted_by_way_of_pyjwt() -> None:
    token = issue_token(SECRET, "alice", "agent") + "="  # the 43-character signature, padded to 44
    assert _plain_payload(SECRET, token) is None
    assert verdict(SECRET, token) == pyjwt_verdict(SECRET, token)
    assert isinstance(verdict(SECRET, token), Claims)


@pytest.mark.parametrize("secret", [
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 someone@example",
    '{"kty":"oct","k":"c2VjcmV0"}',
])
def test_a_secret_pyjwt_refuses_as_an_hmac_key_is_refused_as_before(secret: str) -> None:
    token = ".".join((b64(b'{"alg":"HS256","typ":"JWT"}'),
                      b64(json.dumps(claims(), separators=(",", ":")).encode())))
    token += "." + hs256(secret, token)
    assert _plain_payload(secret, token) is None
    for check in (pyjwt_verdict, verdict, verdict):  # PyJWT's error, every time (the refusal is not cached)
        with pytest.raises(jwt.InvalidKeyError):
            check(secret, token)


def test_verified_tokens_remember_only_good_tokens_and_check_expiry_on_each_use() -> None:
    tokens = VerifiedTokens(SECRET)
    good = issue_token(SECRET, "alice", "agent", ttl_s=2, now_s=time.time() - 1)
    assert tokens.verify(good).sub == "alice" and tokens.verify(good).sub == "alice"
    assert tokens.hits == 1
    with pytest.raises(TokenError, match="invalid token"):
        tokens.verify(REFUSED["another secret"])
    with pytest.raises(TokenError, match="invalid token"):
        tokens.verify(REFUSED["another secret"])
    assert tokens.hits == 1
    expired = issue_token(SECRET, "bob", "agent", ttl_s=1, now_s=time.time() - 2)
    with pytest.raises(TokenError, match="token expired"):
        tokens.verify(expired)
