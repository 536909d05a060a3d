"""The `kuiper` command: classification for people and as JSON, one-line errors, exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kuiper import cli

LESSON = 6  # kuiper grade runs this file on the student build of lesson 06

DATA = Path(__file__).resolve().parents[1] / "data"
MOBILENET = DATA / "models" / "mobilenet_v2.pnnx.param"
IMAGES = sorted(str(p) for p in (DATA / "images").glob("*.jpg"))


def test_run_classifies_the_sample_photos(capsys):
    assert cli.main(["run", str(MOBILENET), *IMAGES, "--top", "5", "--batch", "2", "--json"]) == 0
    results = {Path(r["image"]).stem: [t["class"] for t in r["top"]] for r in json.loads(capsys.readouterr().out)}
    assert results["chelsea"][0] in ("tabby", "tiger cat", "Egyptian cat")
    assert results["coffee"][0] in ("espresso", "cup", "coffee mug")
    assert {"military uniform", "bow tie", "mortarboard"} & set(results["grace_hopper"])


def test_detect_finds_the_shapes_and_draws_them(tmp_path, capsys):
    model = DATA / "models" / "yolov5n_shapes.pnnx.param"
    images = sorted(str(p) for p in (DATA / "shapes").glob("*.jpg"))
    args = ["detect", str(model), *images, "--labels", str(DATA / "shapes" / "classes.txt"), "--out", str(tmp_path)]
    assert cli.main([*args, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    labels = [sorted(d["label"] for d in r["detections"]) for r in results]
    assert labels == [["square", "square", "triangle", "triangle", "triangle"], ["circle", "circle", "square"],
                      ["cross", "cross", "ring"]]
    assert all(d["score"] > 0.9 for r in results for d in r["detections"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes_1.jpg", "shapes_2.jpg", "shapes_3.jpg"]


def test_python_m_kuiper_prints_for_people():
    done = subprocess.run([sys.executable, "-m", "kuiper", "run", str(MOBILENET), IMAGES[0], "--top", "2"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.startswith(IMAGES[0] + ": ") and done.stdout.count("(") == 2


@pytest.mark.parametrize("args, message", [
    (["run", "missing.pnnx.param", "x.jpg"], "kuiper: error: missing.pnnx.param: no such file"),
    (["run", str(MOBILENET), "nowhere.jpg"], "kuiper: error: nowhere.jpg: no such file"),
    (["run", str(MOBILENET), str(DATA / "README.md")], "README.md: not an image that can be read"),
    (["run", str(DATA / "tiny.pnnx.param"), IMAGES[0]], "tiny.pnnx.param gives 10 scores, but"),
    (["run", str(DATA / "models" / "yolov5n.pnnx.param"), IMAGES[0]], "yolov5n.pnnx.param gives"),
    (["bench", "nothing.pnnx.param"], "nothing.pnnx.param: no such file"),
    (["detect", str(DATA / "models" / "yolov5n.pnnx.param"), "gone.jpg"], "gone.jpg: no such file"),
    (["detect", str(MOBILENET), IMAGES[0]], "outputs (1, 1000), not YOLO rows"),
])
def test_bad_input_is_one_line_and_exit_1(args, message):
    done = subprocess.run([sys.executable, "-m", "kuiper", *args], capture_output=True, text=True)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and message in done.stderr, done.stderr
