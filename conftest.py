"""Repository-wide pytest set-up: nbval compares stdout and rich outputs, not stderr; hypothesis
draws the same examples on every CI run, so a red CI is a real regression, not a new random draw;
lesson kernels get the quiet environment tools/sync.py executes them with (no progress bars)."""

import os

from hypothesis import settings
from nbval.plugin import IPyNbCell

from tools.sync import QUIET

for _name, _value in QUIET.items():
    os.environ.setdefault(_name, _value)

settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

_compare_outputs = IPyNbCell.compare_outputs


def _without_stderr(outputs):
    return [out for out in outputs if not (out.get("output_type") == "stream" and out.get("name") == "stderr")]


def compare_outputs(self, test, ref, skip_compare=None):
    """Warnings on stderr (numba, deprecations) vary by machine; they are not the lesson's output."""
    return _compare_outputs(self, _without_stderr(test), _without_stderr(ref), skip_compare)


IPyNbCell.compare_outputs = compare_outputs
