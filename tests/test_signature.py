"""Twilio signature checks: the URL Twilio signed is rebuilt from PUBLIC_URL + path + query."""

from __future__ import annotations

from callflow.signature import BAD_SIGNATURE, MISSING_SIGNATURE, check_signature, sign, signed_url

TOKEN = "12345abcdef"
PARAMS = {"CallSid": "CA123", "From": "+15551230000", "To": "+15550000001", "Digits": "1234"}


def test_valid_signature() -> None:
    url = "https://cb.example.com/twilio/voice/incoming"
    assert check_signature(TOKEN, url, PARAMS, sign(TOKEN, url, PARAMS)) is None


def test_twilio_published_example_signature() -> None:
    # The worked example of Twilio's security docs (token 12345, the myapp.php URL).
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
              "From": "+12349013030", "To": "+18005551212"}
    assert check_signature("12345", url, params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=") is None


def test_signed_without_port_checked_with_port_and_back() -> None:
    params = PARAMS
    with_port = "https://cb.example.com:443/twilio/voice/incoming"
    without_port = "https://cb.example.com/twilio/voice/incoming"
    assert check_signature(TOKEN, with_port, params, sign(TOKEN, without_port, params)) is None
    assert check_signature(TOKEN, without_port, params, sign(TOKEN, with_port, params)) is None


def test_query_string_is_part_of_the_signed_url() -> None:
    url = "https://cb.example.com/twilio/voice/bridge?queue=support&agent=alice"
    sig = sign(TOKEN, url, PARAMS)
    assert check_signature(TOKEN, url, PARAMS, sig) is None
    assert check_signature(TOKEN, url.replace("alice", "bob"), PARAMS, sig) == BAD_SIGNATURE


def test_tampered_parameter_is_refused() -> None:
    url = "https://cb.example.com/twilio/voice/queue-result"
    sig = sign(TOKEN, url, PARAMS)
    assert check_signature(TOKEN, url, {**PARAMS, "From": "+15559999999"}, sig) == BAD_SIGNATURE
    assert check_signature(TOKEN, url, {**PARAMS, "QueueResult": "hangup"}, sig) == BAD_SIGNATURE


def test_missing_header_and_wrong_token() -> None:
    url = "https://cb.example.com/twilio/voice/incoming"
    assert check_signature(TOKEN, url, PARAMS, None) == MISSING_SIGNATURE
    assert check_signature(TOKEN, url, PARAMS, "") == MISSING_SIGNATURE
    assert check_signature(TOKEN, url, PARAMS, sign("another-token", url, PARAMS)) == BAD_SIGNATURE


def test_public_url_with_a_proxy_path_prefix() -> None:
    # The proxy serves https://example.com/callboard/... and strips /callboard before the app sees it.
    url = signed_url("https://example.com/callboard/", "/twilio/voice/wait?queue=support", "http://10.0.0.5:8080/x")
    assert url == "https://example.com/callboard/twilio/voice/wait?queue=support"
    assert check_signature(TOKEN, url, PARAMS, sign(TOKEN, url, PARAMS)) is None


def test_without_public_url_the_request_url_is_used() -> None:
    assert signed_url(None, "/twilio/voice/incoming", "http://127.0.0.1:8080/twilio/voice/incoming") == \
        "http://127.0.0.1:8080/twilio/voice/incoming"


def test_the_exact_url_first_changes_no_verdict() -> None:
    """check_signature tries the rebuilt URL with one HMAC before the library's two; the verdicts stay its own."""
    from twilio.request_validator import RequestValidator

    settings_sha256 = "key=webhooks_sharedkey_x,algorithm=HMAC_SHA256"
    settings_unknown = "key=webhooks_sharedkey_x,algorithm=HMAC_SHA512"
    urls = ["https://cb.example.com/twilio/voice/wait?queue=a&pos=1", "https://cb.example.com:443/twilio/voice/wait",
            "http://127.0.0.1:8080/twilio/voice/incoming", "https://cb.example.com:8443/twilio/voice/incoming"]
    validator = RequestValidator(TOKEN)
    for url in urls:
        for signed in urls:
            for settings in (None, settings_sha256):
                algorithm = "HMAC_SHA256" if settings else None
                sig = validator.compute_signature(signed, PARAMS, algorithm)
                expected = validator.validate(url, PARAMS, sig, algorithm=algorithm)
                assert (check_signature(TOKEN, url, PARAMS, sig, settings) is None) is expected, (url, signed, settings)
        # an algorithm the library does not know is refused, even with a signature valid in SHA-1
        assert check_signature(TOKEN, url, PARAMS, sign(TOKEN, url, PARAMS), settings_unknown) == BAD_SIGNATURE
        assert check_signature(TOKEN, url, PARAMS, "not base64 ☃") == BAD_SIGNATURE
