"""The `kuiper` command: demo output, JSON, and one-line errors."""

import json
import subprocess
import sys

from kuiper import cli


def test_demo_json(capsys):
    assert cli.main(["demo", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["reshape_3x2_row_major"] == [[0, 1], [2, 3], [4, 5]]
    assert result["reshape_3x2_column_major"] == [[0, 4], [3, 2], [1, 5]]
    assert result["pad_1_each_side_shape"] == [4, 5]
    assert result["broadcast_add"]["result_shape"] == [2, 3, 4, 4]


def test_python_m_kuiper_prints_for_people():
    done = subprocess.run([sys.executable, "-m", "kuiper", "demo"], capture_output=True, text=True, check=True)
    assert "lesson 01 demo" in done.stdout and "reshape_3x2_column_major" in done.stdout
