"""`callboard voice-sdk install` from a packed tarball fixture (real npm, no network), the served file, voice tokens."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import jwt
import pytest

from callboard import voice_sdk
from callboard.cli import main as cli_main
from callboard.services import Settings
from tests.conftest import SECRET, TWILIO_TOKEN, make_config, token

SDK_JS = b"/* stand-in for twilio.min.js made by the test */ window.Twilio = {Device: function () {}};\n"


def make_tarball(path: Path, *, name: str = "@twilio/voice-sdk", version: str = "2.99.1",
                 script: bytes | None = SDK_JS, extra: dict[str, bytes] | None = None) -> Path:
    """An npm package tarball shaped like the registry's (everything under package/)."""
    files = {"package/package.json": json.dumps({"name": name, "version": version}).encode()}
    if script is not None:
        files["package/dist/twilio.min.js"] = script
    files.update(extra or {})
    with tarfile.open(path, "w:gz") as tar:
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


needs_npm = pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed (the install runs npm pack)")


@needs_npm
def test_install_from_a_tarball_with_npm_puts_the_sdk_in_the_data_dir(tmp_path: Path) -> None:
    tgz = make_tarball(tmp_path / "voice-sdk.tgz")
    data = tmp_path / "data"
    assert voice_sdk.installed(data) is None
    done = voice_sdk.install(data, str(tgz))
    assert done.version == "2.99.1"
    assert done.path == data / "voice-sdk" / "twilio.min.js"
    assert done.path.read_bytes() == SDK_JS
    assert voice_sdk.installed(data) == done
    # a second install replaces it whole
    voice_sdk.install(data, str(make_tarball(tmp_path / "v2.tgz", version="2.100.0", script=b"/* newer */")))
    again = voice_sdk.installed(data)
    assert again is not None and again.version == "2.100.0" and again.path.read_bytes() == b"/* newer */"
    assert not list((data / "voice-sdk").glob("*.partial"))


@needs_npm
def test_cli_install_and_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CALLBOARD_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("CALLBOARD_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli_main(["voice-sdk", "status"]) == 1
    assert "callboard voice-sdk install" in capsys.readouterr().out
    assert cli_main(["voice-sdk", "install", "--from", str(make_tarball(tmp_path / "sdk.tgz"))]) == 0
    assert "2.99.1" in capsys.readouterr().out
    assert cli_main(["voice-sdk", "status"]) == 0
    assert "/voice-sdk/twilio.min.js" in capsys.readouterr().out
    bad = make_tarball(tmp_path / "other.tgz", name="left-pad")
    assert cli_main(["voice-sdk", "install", "--from", str(bad)]) == 1
    assert "not @twilio/voice-sdk" in capsys.readouterr().err
    assert cli_main(["voice-sdk", "install", "--from", str(tmp_path / "missing.tgz")]) == 1
    assert "npm pack" in capsys.readouterr().err
    # the failed installs left the good one in place
    found = voice_sdk.installed(tmp_path / "data")
    assert found is not None and found.version == "2.99.1"


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "@twilio/voice-sdk-evil"}, "not @twilio/voice-sdk"),
    ({"script": None}, "has no dist/twilio.min.js"),
    ({"script": b"   \n"}, "is empty"),
    ({"version": ""}, "has no version"),
])
def test_wrong_packages_are_refused_in_english(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(voice_sdk.VoiceSdkError, match=message):
        voice_sdk.read_tarball(make_tarball(tmp_path / "x.tgz", **kwargs))


def test_a_tarball_is_read_by_exact_member_names_only(tmp_path: Path) -> None:
    # a hostile member name is never written anywhere: only two members are read, into memory
    tgz = make_tarball(tmp_path / "x.tgz", extra={"../../escape.js": b"boom", "/abs.js": b"boom"})
    version, script = voice_sdk.read_tarball(tgz)
    assert (version, script) == ("2.99.1", SDK_JS)
    assert not (tmp_path.parent / "escape.js").exists()
    (tmp_path / "junk.tgz").write_bytes(b"not gzip at all")
    with pytest.raises(voice_sdk.VoiceSdkError, match="not a readable npm tarball"):
        voice_sdk.read_tarball(tmp_path / "junk.tgz")


def test_missing_npm_is_an_english_error(tmp_path: Path) -> None:
    with pytest.raises(voice_sdk.VoiceSdkError, match="npm was not found"):
        voice_sdk.install(tmp_path, "x.tgz", npm="npm-that-does-not-exist-here")


def _voice_settings(data_dir: Path) -> Settings:
    return Settings(secret=SECRET, twilio_auth_token=TWILIO_TOKEN, twilio_account_sid="AC" + "0" * 32,
                    twilio_api_key="SK" + "0" * 32, twilio_api_secret="api-secret-for-tests-0123456789abcdef",
                    twilio_twiml_app_sid="AP" + "0" * 32, data_dir=data_dir)


async def test_server_serves_the_installed_sdk_and_points_tokens_at_it(tmp_path: Path, make_instance: Any,
                                                                       aiohttp_client: Any) -> None:
    data = tmp_path / "data"
    server = await make_instance(app_settings=_voice_settings(data))
    client = await aiohttp_client(server)
    auth = {"Authorization": f"Bearer {token('alice')}"}
    r = await client.get("/api/voice-token", headers=auth)
    assert r.status == 503 and "callboard voice-sdk install" in (await r.json())["error"]
    assert (await client.get(voice_sdk.SDK_PATH)).status == 404
    (data / "voice-sdk").mkdir(parents=True)
    (data / "voice-sdk" / "twilio.min.js").write_bytes(SDK_JS)
    r = await client.get(voice_sdk.SDK_PATH)
    assert r.status == 200 and await r.read() == SDK_JS and r.content_type == "text/javascript"
    r = await client.get("/api/voice-token", headers=auth)
    body = await r.json()
    assert r.status == 200 and body["sdk_url"] == voice_sdk.SDK_PATH and body["identity"] == "alice"
    grant = jwt.decode(body["token"], "api-secret-for-tests-0123456789abcdef", algorithms=["HS256"])["grants"]
    assert grant["identity"] == "alice" and grant["voice"]["incoming"]["allow"] is True


async def test_voice_sdk_url_overrides_and_supervisors_get_their_own_identity(tmp_path: Path, make_instance: Any,
                                                                             aiohttp_client: Any) -> None:
    config = make_config(server={"voice_sdk_url": "https://sdk.example.com/twilio.min.js"})
    server = await make_instance(config, app_settings=_voice_settings(tmp_path))
    client = await aiohttp_client(server)
    r = await client.get("/api/voice-token", headers={"Authorization": f"Bearer {token('boss', 'supervisor')}"})
    body = await r.json()
    assert r.status == 200, body
    assert body["identity"] == "supervisor:boss" and body["sdk_url"] == "https://sdk.example.com/twilio.min.js"
    claims = jwt.decode(body["token"], "api-secret-for-tests-0123456789abcdef", algorithms=["HS256"])
    assert claims["grants"]["identity"] == "supervisor:boss"
    r = await client.get("/api/voice-token", headers={"Authorization": f"Bearer {token('wall', 'wallboard')}"})
    assert r.status == 403
