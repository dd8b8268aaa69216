"""The commented example config that `callboard init` writes: a small center to edit into your own.

Every key it shows is one `callboard serve --config callboard.toml` accepts (tests/test_cli_newcomer.py
loads it); the keys left out keep the defaults that docs/DESIGN.md lists.
"""

from __future__ import annotations

from pathlib import Path

EXAMPLE_TOML = """\
# callboard.toml: your contact center. Start it with
#     callboard serve --config callboard.toml
# Every key but [[queues]] is optional; docs/DESIGN.md lists them all. Secrets never go here: they come from
# the environment (CALLBOARD_SECRET, TWILIO_AUTH_TOKEN, ...; see the README).

[center]
name = "Tokyo support"              # shown at the top of the wallboard
timezone = "Asia/Tokyo"             # "today" on the wallboard resets at reset_time in this zone
reset_time = "00:00"
sl_threshold_s = 20                 # service level: answered within this many seconds
short_abandon_s = 5                 # callers hanging up faster than this do not count against you
wrap_up_s = 15                      # after-call work before an agent is available again (0: none)
disconnect_grace_s = 10             # an agent whose browser is gone this long is shown away
language = "ja-JP"                  # the language Twilio speaks to callers in
voice = "Polly.Mizuki"              # the Twilio voice for greetings and position announcements
ui_language = "ja"                  # the pages' language when ?lang= and the browser say nothing we have (en, ja)
away_reasons = ["休憩", "昼食", "会議", "研修"]

[[queues]]
name = "support"                    # the Twilio queue name: letters, digits, # _ - (at most 64)
numbers = ["+81501234567"]          # calls to these numbers (E.164) land in this queue
team = "support"
greeting = "お電話ありがとうございます。担当者におつなぎします。"

# The wallboard's colours for this queue: green, amber from the *_warning value, red from *_critical.
[queues.thresholds]
sl_target = 0.8                     # service level at or above this is green
sl_warning = 0.7                    # ... below this it is red
waiting_warning = 3                 # callers waiting
waiting_critical = 8
wait_warning_s = 60                 # the longest wait; a caller past wait_critical_s flashes the board
wait_critical_s = 180
abandon_warning = 0.05              # abandon rate at or above this is amber
abandon_critical = 0.1              # ... and red from here

[[queues]]
name = "sales"
numbers = ["+81501234568"]
team = "sales"
greeting = "お電話ありがとうございます。営業担当におつなぎします。"

# One entry per agent: id is also the Twilio client identity (From=client:<id>).
[[agents]]
id = "yamada"
name = "山田 太郎"
team = "support"
queues = ["support"]

[[agents]]
id = "suzuki"
name = "鈴木 花子"
team = "support"
queues = ["support", "sales"]       # an agent may serve several queues

[[agents]]
id = "tanaka"
name = "田中 一郎"
team = "sales"
queues = ["sales"]
"""


class ExampleExists(Exception):
    """The target file is already there: init never overwrites a config someone may have edited."""


def write_example(path: Path) -> Path:
    """Write EXAMPLE_TOML to `path`, refusing to replace an existing file (atomically: O_EXCL)."""
    try:
        with open(path, "x", encoding="utf-8") as out:
            out.write(EXAMPLE_TOML)
    except FileExistsError:
        raise ExampleExists(str(path)) from None
    return path
