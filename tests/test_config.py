"""Configuration: every kind of mistake gives one clear English error naming the file and key, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from callboard.config import ConfigError, demo_config, load_config

GOOD = """
[center]
name = "Tokyo support"
timezone = "Asia/Tokyo"
sl_threshold_s = 30

[[queues]]
name = "support"
numbers = ["+81501234567"]
team = "support"

[[agents]]
id = "alice"
name = "Alice"
team = "support"
queues = ["support"]
"""

BAD = [
    ("unknown key", GOOD.replace('sl_threshold_s = 30', 'sl_treshold_s = 30'), "center.sl_treshold_s", "unknown key"),
    ("unknown section", GOOD + "\n[centre]\nname = 'x'\n", "centre", "unknown key"),
    ("bad queue name", GOOD.replace('name = "support"', 'name = "sup port"', 1), "queues[0].name", "not a valid Twilio queue name"),
    ("duplicate agent", GOOD + '\n[[agents]]\nid = "alice"\n', "agents[1].id", "duplicate agent id 'alice'"),
    ("unknown queue", GOOD.replace('queues = ["support"]', 'queues = ["sales"]'), "agents[0].queues", "unknown queue 'sales'"),
    ("unknown team", GOOD + '\n[[teams]]\nname = "support"\n\n[[agents]]\nid = "bob"\nteam = "sales"\n', "agents[1].team", "unknown team 'sales'"),
    ("bad number", GOOD.replace('"+81501234567"', '"0501234567"'), "queues[0].numbers", "not an E.164 number"),
    ("bad time zone", GOOD.replace("Asia/Tokyo", "Mars/Olympus"), "center.timezone", "unknown time zone"),
    ("wrong type", GOOD.replace("sl_threshold_s = 30", 'sl_threshold_s = "30"'), "center.sl_threshold_s", "must be a non-negative number"),
    ("no queues", '[center]\nname = "x"\n', "queues", "at least one"),
    ("not TOML", "[[queues]\nname=", "(syntax)", "not valid TOML"),
]


def test_a_good_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "callboard.toml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.center.timezone == "Asia/Tokyo" and config.center.sl_threshold_s == 30
    assert config.queue_for_number("+81501234567").name == "support"
    assert config.agent("alice").queues == ("support",)  # type: ignore[union-attr]


def test_the_demo_center_is_valid() -> None:
    config = demo_config()
    assert len(config.queues) >= 2 and len(config.agents) >= 10


@pytest.mark.parametrize("name,text,key,problem", BAD, ids=[b[0] for b in BAD])
def test_each_mistake_names_the_file_and_key(tmp_path: Path, name: str, text: str, key: str, problem: str) -> None:
    path = tmp_path / "center.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == key
    assert problem in err.value.problem
    assert str(err.value).startswith(f"{path}: {key}: ")


def test_serve_exits_2_with_the_message(tmp_path: Path) -> None:
    path = tmp_path / "center.toml"
    path.write_text(BAD[0][1])
    result = subprocess.run([sys.executable, "-m", "callboard", "serve", "--config", str(path)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert f"{path}: center.sl_treshold_s: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_file_is_an_error_too(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "callboard", "serve", "--config", str(tmp_path / "nope.toml")],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2 and "no such file" in result.stderr
