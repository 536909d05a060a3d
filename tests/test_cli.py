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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes_1.detect.png", "shapes_2.detect.png", "shapes_3.detect.png"]


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
    (["detect", str(MOBILENET), IMAGES[0]], "outputs (1, 1000), not YOLOv5 rows (B, boxes, 5 + classes) nor a YOLOv8 head"),
])
def test_bad_input_is_one_line_and_exit_1(args, message):
    done = subprocess.run([sys.executable, "-m", "kuiper", *args], capture_output=True, text=True)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and message in done.stderr, done.stderr


SMOLLM = DATA / "models" / "smollm2-135m-instruct-q4_1.gguf"
YOLO_SHAPES = DATA / "models" / "yolov5n_shapes.pnnx.param"
SHAPES = sorted((DATA / "shapes").glob("*.jpg"))


def kuiper(*args, **kwargs) -> subprocess.CompletedProcess:
    """`python -m kuiper ARGS` in a fresh process, its output captured."""
    return subprocess.run([sys.executable, "-m", "kuiper", *map(str, args)], capture_output=True, **kwargs)


@pytest.mark.parametrize("args, option, expected", [
    (["run", "m", "i", "--batch", "0"], "--batch", "from 1 to 4096"),
    (["run", "m", "i", "--top", "0"], "--top", ">= 1"),
    (["run", "m", "i", "--top", "-1"], "--top", ">= 1"),
    (["run", "m", "i", "--top", "١٢"], "--top", ">= 1"),
    (["run", "m", "i", "--size", "0"], "--size", "from 1 to 8192"),
    (["detect", "m", "i", "--conf", "1.5"], "--conf", "[0, 1]"),
    (["detect", "m", "i", "--iou", "nan"], "--iou", "[0, 1]"),
    (["generate", "m", "--prompt", "x", "--seed", "-1"], "--seed", "from 0 to"),
    (["generate", "m", "--prompt", "x", "--context", "-5"], "--context", "from 1 to"),
    (["generate", "m", "--prompt", "x", "--max-tokens", "0"], "--max-tokens", "from 1 to"),
    (["generate", "m", "--prompt", "x", "--temperature", "nan"], "--temperature", "[0, 100]"),
    (["generate", "m", "--prompt", "x", "--temperature", "-0.5"], "--temperature", "[0, 100]"),
    (["generate", "m", "--prompt", "x", "--top-p", "0"], "--top-p", "(0, 1]"),
    (["generate", "m", "--prompt", "x", "--top-p", "-1"], "--top-p", "(0, 1]"),
    (["generate", "m", "--prompt", "x", "--top-p", "1.01"], "--top-p", "(0, 1]"),
    (["generate", "m", "--prompt", "x", "--top-k", "-3"], "--top-k", ">= 0"),
    (["generate", "m", "--prompt", "x", "--repetition-penalty", "0"], "--repetition-penalty", "(0, 100]"),
    (["chat", "m", "--repetition-penalty", "inf"], "--repetition-penalty", "(0, 100]"),
    (["bench", "ops", "--batch", "0"], "--batch", "from 1 to 4096"),
    (["quantize", "a.gguf", "b.gguf", "--group", "16"], "--group", "invalid choice"),
])
def test_options_are_range_checked_when_parsed(args, option, expected, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(args)
    err = capsys.readouterr().err
    assert exited.value.code == 1 and f"argument {option}" in err and expected in err, err
    assert "Traceback" not in err and err.count("\n") == 1, err


def test_a_prompt_that_is_not_utf8_is_refused_at_parse_time():
    done = subprocess.run([sys.executable.encode(), b"-m", b"kuiper", b"generate", b"m", b"--prompt", b"caf\xe9"],
                          capture_output=True)
    assert done.returncode == 1 and b"argument --prompt: not UTF-8 text: b'caf\\xe9'" in done.stderr, done.stderr


@pytest.mark.parametrize("args, message", [
    (["run", MOBILENET, IMAGES[0], "--labels", "nowhere.txt"], "nowhere.txt: cannot read the class names"),
    (["run", SMOLLM, IMAGES[0]], "a language model; this command takes a PNNX image model"),
    (["run", IMAGES[0], IMAGES[1]], "not a PNNX model (a .pnnx.param file starts with 7767517)"),
    (["detect", YOLO_SHAPES.with_suffix(".bin"), IMAGES[0]], "the weights; name the model's .pnnx.param"),
    (["detect", YOLO_SHAPES, IMAGES[0], "--out", IMAGES[1]], "is a file; expected a folder"),
    (["generate", SMOLLM, "--prompt", "", "--raw"], "the prompt is empty"),
])
def test_more_bad_input_is_one_line_and_exit_1(args, message):
    done = kuiper(*args, text=True)
    assert done.returncode == 1 and done.stdout == "", done.stdout
    assert done.stderr.strip().count("\n") == 0 and message in done.stderr, done.stderr


def test_one_bad_image_does_not_lose_the_others(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(Path(IMAGES[0]).read_bytes()[:300])
    done = kuiper("run", MOBILENET, IMAGES[0], broken, IMAGES[1], "--json", "--batch", "2", text=True)
    assert done.returncode == 1
    results = json.loads(done.stdout)
    assert [r["image"] for r in results] == [IMAGES[0], str(broken), IMAGES[1]]
    assert "top" in results[0] and "top" in results[2] and "not an image that can be read" in results[1]["error"]
    assert done.stderr.count("\n") == 1 and f"kuiper: error: {broken}: " in done.stderr


def test_detect_never_writes_over_the_photos(tmp_path):
    photos = []
    for path in SHAPES[:2]:
        photos.append(tmp_path / path.name)
        photos[-1].write_bytes(path.read_bytes())
    extensionless = tmp_path / "noext"
    extensionless.write_bytes(SHAPES[2].read_bytes())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert cli.main(["detect", str(YOLO_SHAPES), *map(str, photos), str(extensionless), "--out", str(tmp_path)]) == 0
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*before, "shapes_1.detect.png", "shapes_2.detect.png", "noext.detect.png"])


def test_detect_refuses_an_output_that_is_an_input(tmp_path, capsys):
    photo, other = tmp_path / "a.detect.png", tmp_path / "a.jpg"  # a.jpg's copy would be a.detect.png
    photo.write_bytes(SHAPES[0].read_bytes())
    other.write_bytes(SHAPES[1].read_bytes())
    assert cli.main(["detect", str(YOLO_SHAPES), str(photo), str(other), "--out", str(tmp_path)]) == 1
    assert f"{photo}: is the input {photo}; refusing to write over it" in capsys.readouterr().err
    assert photo.read_bytes() == SHAPES[0].read_bytes() and len(list(tmp_path.iterdir())) == 2


def quantize_err(args: list[str], capsys) -> str:
    assert cli.main(["quantize", *map(str, args)]) == 1
    return capsys.readouterr().err


def test_quantize_never_touches_its_source(tmp_path, capsys):
    source = tmp_path / "model.gguf"
    source.write_bytes(b"GGUF" + bytes(60))
    (tmp_path / "hard.gguf").hardlink_to(source)
    (tmp_path / "soft.gguf").symlink_to(source)
    for alias in ["hard.gguf", "soft.gguf", "model.gguf"]:
        err = quantize_err([source, tmp_path / alias], capsys)
        assert f"{tmp_path / alias}: is the input {source} (the same file on disk)" in err
    assert "is a folder" in quantize_err([source, tmp_path], capsys)
    assert "the folder" in quantize_err([source, tmp_path / "missing" / "out.gguf"], capsys)
    assert source.read_bytes() == b"GGUF" + bytes(60) and len(list(tmp_path.iterdir())) == 3


def test_generate_stops_cleanly_at_the_context_limit():
    done = kuiper("generate", SMOLLM, "--prompt", "Once upon a time", "--raw", "--context", "10",
                  "--max-tokens", "50", "--json", text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["stopped"] == "context" and result["prompt_tokens"] + result["new_tokens"] == 11
    assert result["text"]


def test_a_closed_pipe_ends_quietly():
    done = subprocess.run(f"{sys.executable} -m kuiper generate {SMOLLM} --prompt 'Tell me a story' "
                          f"--max-tokens 40 | head -c 5", shell=True, capture_output=True, text=True)
    assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr
    assert len(done.stdout) == 5


@pytest.mark.parametrize("raised, status, message", [
    (KeyboardInterrupt(), 130, ""),
    (RuntimeError("boom\nsecond line"), 1, "kuiper: error: RuntimeError: boom second line (this is a bug in kuiper)"),
    (FileNotFoundError(2, "No such file or directory", "x.bin"), 1, "kuiper: error: [Errno 2] No such file"),
])
def test_anything_else_is_still_one_line(monkeypatch, capsys, raised, status, message):
    def fail(args):
        raise raised

    monkeypatch.setattr(cli, "run", fail)
    assert cli.main(["run", "m", "i"]) == status
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and message in err and "Traceback" not in err


def test_a_free_size_model_runs_at_the_default_size(tmp_path, capsys):
    lines = MOBILENET.read_text().splitlines()
    lines[2] = lines[2].replace("(1,3,224,224)", "(1,3,?,?)")
    assert "(1,3,?,?)" in lines[2]
    free = tmp_path / "free.pnnx.param"
    free.write_text("\n".join(lines) + "\n")
    (tmp_path / "free.pnnx.bin").symlink_to(MOBILENET.with_suffix(".bin"))
    assert cli.main(["run", str(free), IMAGES[0], "--json", "--top", "3"]) == 0
    assert cli.main(["run", str(MOBILENET), IMAGES[0], "--json", "--top", "3"]) == 0
    free_out, fixed_out = capsys.readouterr().out.splitlines()
    assert json.loads(free_out)[0]["top"] == json.loads(fixed_out)[0]["top"]
    assert cli.main(["run", str(MOBILENET), IMAGES[0], "--size", "160"]) == 1
    assert "takes 224 × 224 images, not 160" in capsys.readouterr().err


def test_a_chat_line_that_is_not_utf8_is_asked_again():
    done = kuiper("chat", SMOLLM, "--max-tokens", "4", input=b"caf\xe9\nHi\n\n")
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
    assert b"not UTF-8 text: b'caf\\xe9': type the line again" in done.stderr
    assert done.stderr.count(b"decode:") == 1  # the second line got its answer
