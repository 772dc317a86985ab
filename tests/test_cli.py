"""The command line: listing formats, rounding numbers, and errors that exit with status 2."""

from __future__ import annotations

import json
import subprocess
import sys

from boundfinder import format_names, parse_format
from boundfinder.cli import main


def test_formats_lists_every_named_format(capsys):
    assert main(["formats"]) == 0
    out = capsys.readouterr().out
    for name in format_names():
        assert f"\n{name} " in out
    assert "448" in out and "57344" in out  # e4m3fn and e5m2 maxima


def test_formats_json_is_machine_readable(capsys):
    assert main(["formats", "--json", "e4m3fn", "fixed16.8"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["max"] == 448.0 and rows[0]["bits"] == 8 and rows[0]["overflow"] == "nan"
    assert rows[1]["max"] == parse_format("fixed16.8").max_finite


def test_quantize_prints_rounded_values(capsys):
    assert main(["quantize", "bf16", "1.9875", "--rounding", "truncate"]) == 0
    assert "1.984375" in capsys.readouterr().out


def test_bad_format_name_exits_2_with_a_clear_message(capsys):
    assert main(["quantize", "float17", "1.0"]) == 2
    err = capsys.readouterr().err
    assert "unknown format name 'float17'" in err and "e4m3fn" in err


def test_console_script_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "boundfinder.cli", "formats", "e2m1fn"], capture_output=True,
                         text=True, check=True).stdout
    assert "e2m1fn" in out and "6" in out
