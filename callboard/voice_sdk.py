"""The Twilio Voice JS SDK without a hunt: `callboard voice-sdk install` fetches it with npm, the server serves it.

Twilio publishes the browser SDK only as the npm package `@twilio/voice-sdk` (its old CDN is gone), so an
operator used to have to find, build and host `twilio.min.js` by hand. Here `npm pack` fetches the package
tarball from the npm registry (npm's own config decides which registry and proxy), we check it and unpack
only `dist/twilio.min.js` into `<CALLBOARD_DATA>/voice-sdk/`, and the server serves it at SDK_PATH.
`[server] voice_sdk_url` still wins when set (a CDN, or a copy of your own).

Nothing here runs at request time but `installed()`: a file check, no subprocess.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "@twilio/voice-sdk"
DEFAULT_VERSION = "2"  # npm resolves this to the newest 2.x: the SDK generation this console is written for
SDK_PATH = "/voice-sdk/twilio.min.js"  # the stable URL the console loads; the file behind it may change
SDK_MEMBER = "package/dist/twilio.min.js"
MAX_SDK_BYTES = 20 * 1024 * 1024  # twilio.min.js is about 400 KB; anything near this is not the SDK
NPM_TIMEOUT_S = 300


class VoiceSdkError(Exception):
    """The install failed; str() is an English sentence for the operator."""


@dataclass(frozen=True, slots=True)
class Installed:
    version: str
    path: Path


def sdk_dir(data_dir: Path) -> Path:
    return data_dir / "voice-sdk"


def installed(data_dir: Path) -> Installed | None:
    """The installed SDK, if any (the file and its version from install.json)."""
    directory = sdk_dir(data_dir)
    path = directory / "twilio.min.js"
    if not path.is_file():
        return None
    try:
        version = str(json.loads((directory / "install.json").read_text(encoding="utf-8")).get("version", "unknown"))
    except (OSError, ValueError):
        version = "unknown"
    return Installed(version, path)


def install(data_dir: Path, spec: str | None = None, *, npm: str = "npm") -> Installed:
    """Fetch the SDK with `npm pack <spec>` (default `@twilio/voice-sdk@2`) and unpack its dist file.

    `spec` is anything npm pack accepts: `@twilio/voice-sdk@2.12.1`, or a local tarball path (offline
    installs and the tests). The new file replaces the old one atomically (a rename), so a running server
    never serves half a file.
    """
    spec = spec or f"{PACKAGE}@{DEFAULT_VERSION}"
    if shutil.which(npm) is None:
        raise VoiceSdkError(f"npm was not found (looked for {npm!r}); install Node.js and npm, then run this again")
    with tempfile.TemporaryDirectory(prefix="cb-voice-sdk-") as tmp:
        try:
            done = subprocess.run([npm, "pack", spec, "--json", "--pack-destination", tmp], cwd=tmp,
                                  capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise VoiceSdkError(f"npm pack {spec} took longer than {NPM_TIMEOUT_S} s (registry unreachable?)") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise VoiceSdkError(f"npm pack {spec} failed: {last}")
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if not tarballs:
            raise VoiceSdkError(f"npm pack {spec} produced no tarball")
        version, script = read_tarball(tarballs[0])
    directory = sdk_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / "twilio.min.js.partial"
    partial.write_bytes(script)
    partial.replace(directory / "twilio.min.js")
    (directory / "install.json").write_text(json.dumps({"package": PACKAGE, "version": version, "spec": spec}) + "\n",
                                            encoding="utf-8")
    return Installed(version, directory / "twilio.min.js")


def read_tarball(path: Path) -> tuple[str, bytes]:
    """(version, twilio.min.js bytes) from an npm package tarball, after checking it is the Voice SDK.

    Only two members are read, by exact name, so a hostile tarball cannot write anywhere (no extractall).
    """
    try:
        with tarfile.open(path, "r:gz") as tar:
            manifest = _member(tar, "package/package.json", 1024 * 1024)
            script = _member(tar, SDK_MEMBER, MAX_SDK_BYTES)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise VoiceSdkError(f"{path.name} is not a readable npm tarball: {exc}") from None
    try:
        meta = json.loads(manifest)
    except ValueError:
        raise VoiceSdkError(f"{path.name}: package.json is not JSON") from None
    if not isinstance(meta, dict) or meta.get("name") != PACKAGE:
        name = meta.get("name") if isinstance(meta, dict) else None
        raise VoiceSdkError(f"{path.name} is the package {name!r}, not {PACKAGE}")
    version = meta.get("version")
    if not isinstance(version, str) or not version:
        raise VoiceSdkError(f"{path.name}: package.json has no version")
    if not script.strip():
        raise VoiceSdkError(f"{path.name}: {SDK_MEMBER} is empty")
    return version, script


def _member(tar: tarfile.TarFile, name: str, limit: int) -> bytes:
    try:
        info = tar.getmember(name)
    except KeyError:
        raise VoiceSdkError(f"the package has no {name.removeprefix('package/')}") from None
    if not info.isfile():
        raise VoiceSdkError(f"{name.removeprefix('package/')} in the package is not a regular file")
    if info.size > limit:
        raise VoiceSdkError(f"{name.removeprefix('package/')} is larger than {limit // (1024 * 1024)} MiB")
    handle = tar.extractfile(info)
    if handle is None:
        raise VoiceSdkError(f"cannot read {name} from the package")
    return handle.read(limit + 1)
