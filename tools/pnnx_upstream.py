"""Run pnnx's own operator tests (Tencent/ncnn, tools/pnnx/tests/test_*.py) through kuiper.

Each upstream test builds a small torch model, traces it and compares pnnx's output with torch's.
This tool runs the test's own code up to its `torch.jit.trace(net, inputs)` call, takes that model
and those inputs, exports them with the pinned pip `pnnx`, loads the `.pnnx.param` with
`kuiper.load`, and compares every output with torch's (fp32: max |got − want| ≤ 1e-4 of the largest
finite |want|; integer and bool outputs equal; shapes equal).

    python tools/pnnx_upstream.py                      # the selection, from the local ncnn mirror
    python tools/pnnx_upstream.py --ncnn ~/src/ncnn -k softmax -k Embedding
    python tools/pnnx_upstream.py --list               # the selection and what it leaves out, why

Where the tests come from: `--ncnn DIR` (a checkout: DIR/tools/pnnx/tests), else the bare mirror
`/work/.mirror/Tencent+ncnn/repo` read with `git show` (no network).

Which tests count ("2-D and tensor operators that can run here"): every top-level
`tools/pnnx/tests/test_*.py` except those matched by `EXCLUDED` below, a table of (pattern, reason):
1-D and 3-D layers, recurrent layers, complex numbers and FFTs, whole models and blocks from model
libraries (torchvision, torchaudio, transformers), and tests of pnnx's own tooling. Everything else
counts, including tests this tool cannot run (a missing package is a failure, not an exclusion).
Two departures from running the test as it is: `torch.onnx.export` is a no-op (some tests export
ONNX first, which needs onnxscript and is not what we test), and the tests in `SHAPES_ONLY` compare
shapes only, as upstream does, because torch's output there is uninitialised memory.

Output: one JSON line per test (`--out`, default `pnnx_upstream.jsonl`): test, status, detail;
then a summary on stdout: passed / failed by status, and kuiper's errors grouped by kind. Status:
pass; pnnx (pnnx's graph is not torch's model: kuiper matches the graph run by torch through the
`_pnnx.py` that pnnx writes beside it, within 1e-4, but not the model; e.g. pnnx rewrites GELU's tanh
formula as the erf F.gelu); numeric (error above 1e-4, detail = the relative error); mismatch (output count, shape or
dtype); kuiper (a KuiperError: detail = its message); exception (any other exception from kuiper:
a bug by the robustness contract); export (pnnx wrote no .param); test (the test's own code failed
before its trace, e.g. a missing package); skipped (the test returned before tracing, e.g. a torch
version gate); timeout; crash (the worker process died).

Each test runs in a worker process that runs many tests in turn; a crash or timeout restarts it.
Not part of pytest: it needs the ncnn tree and takes minutes (about 2 s a test on one core).
"""
import argparse
import collections
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

MIRROR = Path("/work/.mirror/Tencent+ncnn/repo")
TESTS = "tools/pnnx/tests"
TOLERANCE = 1e-4
EXCLUDED = [
    (r"(?i)[13]d(?![a-z])", "1-D or 3-D layer"),
    (r"_(RNN|LSTM|GRU)$", "recurrent layer"),
    (r"fft|complex|_real$|_imag$|stft|view_as_|spectrogram", "complex numbers / FFT"),
    (r"^test_(torchvision|torchaudio|transformers|quantization)_", "block from a model library"),
    (r"^test_(resnet18|mobilenet_v[23].*|shufflenet_v2.*|squeezenet1_1|convnext_tiny|swin_t|vit_b_32)$",
     "whole model from torchvision"),
    (r"^test_pnnx_(input_npy|model_stat)$", "pnnx tooling, not an operator"),
]


# tests whose torch output is uninitialised memory: upstream compares only the shapes, and so do we
SHAPES_ONLY = {"test_Tensor_new_empty"}
# outputs whose order along a dimension torch leaves unspecified: test -> ((values, indices) output
# numbers, dim). topk(sorted=False) gives whatever order its selection algorithm left (libstdc++'s
# nth_element on the CPU); kuiper returns them sorted. Both sides are put in index order, then compared.
UNORDERED = {"test_torch_topk": ((2, 3), -1)}


def read_tests(ncnn: Path | None) -> dict[str, str]:
    """name → source of every top-level tools/pnnx/tests/test_*.py, from a checkout or the mirror."""
    if ncnn is not None:
        return {p.stem: p.read_text() for p in sorted((ncnn / TESTS).glob("test_*.py"))}
    git = ["git", f"--git-dir={MIRROR}"]
    names = subprocess.run(git + ["ls-tree", "--name-only", f"HEAD:{TESTS}"], check=True, capture_output=True,
                           text=True).stdout.split()
    return {Path(n).stem: subprocess.run(git + ["show", f"HEAD:{TESTS}/{n}"], check=True, capture_output=True,
                                         text=True).stdout
            for n in names if re.fullmatch(r"test_\w+\.py", n)}


def exclusion(name: str) -> str | None:
    """Why `name` is outside the selection, or None if it counts."""
    return next((why for pattern, why in EXCLUDED if re.search(pattern, name)), None)


# ---- the worker: runs tests in turn, one JSON line each ----

class Captured(Exception):
    """Raised by the stand-in for torch.jit.trace: carries the model and its inputs."""


def flat(x) -> list:
    """The tensors of a nested tuple/list output, in order."""
    return [t for item in x for t in flat(item)] if isinstance(x, (tuple, list)) else [x]


def compare(got: list, want: list) -> tuple[str, object]:
    """(status, detail) of kuiper's outputs against torch's (tensors or arrays)."""
    import numpy as np
    if len(got) != len(want):
        return "mismatch", f"{len(got)} outputs, torch has {len(want)}"
    worst = 0.0
    for i, (g, w) in enumerate(zip(got, want)):
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape:
            return "mismatch", f"output {i}: shape {g.shape}, torch {w.shape}"
        if w.dtype.kind == "f":
            finite = np.abs(w[np.isfinite(w)])
            scale = max(float(finite.max()) if finite.size else 0.0, 1e-6)
            same_inf = (g == w) | (np.isnan(g) & np.isnan(w))
            diff = np.where(same_inf, 0.0, np.abs(g.astype(np.float64) - w))
            worst = max(worst, float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0)) / scale)
        elif g.dtype.kind != w.dtype.kind and not (g.dtype.kind in "iu" and w.dtype.kind in "iu"):
            return "mismatch", f"output {i}: dtype {g.dtype}, torch {w.dtype}"
        elif not np.array_equal(g, w):
            return "numeric", f"output {i}: {int((g != w).sum())} of {w.size} values differ"
    return ("pass" if worst <= TOLERANCE else "numeric"), worst


def run_one(name: str, path: Path) -> dict:
    """Run one upstream test's code to its trace, then export, load and compare (see the module doc)."""
    import importlib.util
    import numpy as np
    import pnnx
    import torch
    import kuiper
    from tools.zoo import quiet

    def capture(net, inputs, *args, **kwargs):
        raise Captured(net, inputs if isinstance(inputs, tuple) else (inputs,))

    trace, onnx_export = torch.jit.trace, torch.onnx.export
    torch.jit.trace, torch.onnx.export = capture, lambda *args, **kwargs: None  # onnx is not what we test
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        with quiet():
            spec.loader.exec_module(module)
            module.test()
        return {"status": "skipped", "detail": "the test returned before tracing"}
    except Captured as captured:
        net, inputs = captured.args
    except Exception as err:
        return {"status": "test", "detail": f"{type(err).__name__}: {err}"[:300]}
    finally:
        torch.jit.trace, torch.onnx.export = trace, onnx_export
    with torch.no_grad():
        want = flat(net(*inputs))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with quiet():
                if all(isinstance(x, torch.Tensor) for x in inputs):
                    pnnx.export(net, f"{tmp}/m.pt", inputs)
                else:  # lists of tensors as inputs: trace and convert as the test does, inputs flattened
                    trace(net, inputs).save(f"{tmp}/m.pt")
                    pnnx.convert(f"{tmp}/m.pt", flat(inputs))
        except Exception:
            pass  # pnnx raises after writing the .param when its ncnn step fails; only the .param matters
        if not Path(f"{tmp}/m.pnnx.param").exists():
            return {"status": "export", "detail": "pnnx wrote no .pnnx.param"}
        try:
            graph = kuiper.load(f"{tmp}/m.pnnx.param")
            got = [np.asarray(g) for g in flat(graph(*(x.numpy() for x in flat(inputs))))]
        except kuiper.KuiperError as err:
            return {"status": "kuiper", "detail": str(err)[:300]}
        except Exception as err:
            return {"status": "exception", "detail": f"{type(err).__name__}: {err}"[:300]}
        if name in SHAPES_ONLY:
            want = [torch.zeros_like(w) for w in want]
            got = [np.zeros_like(g) for g in got]
        if name in UNORDERED:
            got, want = in_index_order(got, *UNORDERED[name]), in_index_order(want, *UNORDERED[name])
        status, detail = compare(got, want)
        if status == "numeric":
            return pnnx_rewrite(Path(tmp), inputs, got, detail) or {"status": status, "detail": detail}
    return {"status": status, "detail": detail}


def in_index_order(outputs: list, pair: tuple[int, int], dim: int) -> list:
    """`outputs` with the values and indices outputs numbered `pair` sorted by index along `dim`."""
    import numpy as np
    outputs = [np.asarray(o) for o in outputs]
    order = np.argsort(outputs[pair[1]], axis=dim, kind="stable")
    for i in pair:
        outputs[i] = np.take_along_axis(outputs[i], order, axis=dim)
    return outputs


def pnnx_rewrite(folder: Path, inputs: tuple, got: list, against_torch: object) -> dict | None:
    """Status "pnnx" when kuiper's outputs match the graph as pnnx's own `m_pnnx.py` runs it in torch
    (so pnnx changed the model while exporting it); None if they do not, or that file does not run."""
    import importlib.util
    import torch
    try:
        spec = importlib.util.spec_from_file_location("m_pnnx", folder / "m_pnnx.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with torch.no_grad():
            graph_out = flat(module.Model().float().eval()(*flat(inputs)))
    except Exception:
        return None
    status, detail = compare(got, graph_out)
    if status != "pass":
        return None
    return {"status": "pnnx", "detail": f"kuiper vs pnnx's graph in torch {detail:.1e}; "
                                        f"that graph vs torch's model {against_torch:.1e}"}


def worker(folder: Path, names: list[str]) -> None:
    """Run `names` in turn from `folder`, one JSON line each on stdout (flushed)."""
    sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(folder)]
    os.chdir(folder)  # some tests write files next to themselves
    for name in names:
        print(json.dumps({"test": name, "started": True}), flush=True)
        result = run_one(name, folder / f"{name}.py")
        print(json.dumps({"test": name, **result}), flush=True)


# ---- the parent: selection, workers, report ----

def run_all(folder: Path, names: list[str], timeout: float, out) -> list[dict]:
    """Run the tests in worker processes, restarting after a crash or timeout; write each result to `out`."""
    results, todo = [], list(names)

    def record(result: dict) -> None:
        todo.remove(result["test"])
        results.append(result)
        out.write(json.dumps(result) + "\n")
        out.flush()
        print(f"{len(results):4}/{len(names)} {result['status']:9} {result['test']}", file=sys.stderr, flush=True)

    while todo:
        process = subprocess.Popen([sys.executable, __file__, "--worker", str(folder), *todo],
                                   stdout=subprocess.PIPE, text=True)
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in process.stdout] + [lines.put("")],
                         daemon=True).start()
        current = None
        while True:
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                process.kill()
                record({"test": current, "status": "timeout", "detail": f"over {timeout:g} s"})
                break
            if not line:
                process.wait()
                if current is not None:
                    record({"test": current, "status": "crash", "detail": f"worker exit code {process.returncode}"})
                break
            if not line.startswith('{"test": '):
                continue  # something the test printed outside its quiet blocks
            result = json.loads(line)
            if result.pop("started", False):
                current = result["test"]
            else:
                current = None
                record(result)
        process.wait()
    return results


def kind_of(detail: str) -> str:
    """A kuiper error message reduced to its kind: the unregistered type, or the unsupported setting."""
    if match := re.search(r"no layer is registered for type '([^']+)'", detail):
        return f"no layer: {match[1]}"
    if match := re.search(r"(\w+)=\S+ is not supported|(\w+) '[^']*' is not supported", detail):
        return f"unsupported setting: {match[1] or match[2]}"
    return re.sub(r"'[^']*'|\(line \d+\)", "…", detail)[:120]


def summary(results: list[dict]) -> str:
    """Passed / failed by status, and the kuiper errors by kind."""
    count = collections.Counter(r["status"] for r in results)
    total = len(results)
    lines = [f"passed {count['pass']} of {total} ({100 * count['pass'] / max(total, 1):.1f} %)"]
    lines += [f"  {status:9} {n}" for status, n in count.most_common() if status != "pass"]
    for status in ("pnnx", "kuiper", "exception", "numeric", "mismatch", "export", "test", "timeout", "crash", "skipped"):
        failed = [r for r in results if r["status"] == status]
        if failed:
            lines.append(f"{status}:")
            for r in failed:
                detail = kind_of(r["detail"]) if status == "kuiper" else r["detail"]
                lines.append(f"  {r['test']}: {detail}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ncnn", type=Path, help="an ncnn checkout (default: the mirror, via git show)")
    parser.add_argument("-k", action="append", default=[], help="only tests whose name contains this (repeatable)")
    parser.add_argument("--out", default="pnnx_upstream.jsonl", help="the JSON-lines report")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one test may take")
    parser.add_argument("--list", action="store_true", help="print the selection and the exclusions, run nothing")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(Path(args.worker[0]), args.worker[1:])
    sources = read_tests(args.ncnn)
    chosen = [n for n in sources if exclusion(n) is None and (not args.k or any(k in n for k in args.k))]
    if args.list:
        for name in sources:
            print(f"{name:50} {exclusion(name) or 'counts'}")
        print(f"{len(chosen)} of {len(sources)} tests count")
        return
    with tempfile.TemporaryDirectory() as folder, open(args.out, "w") as out:
        for name, text in sources.items():
            Path(folder, f"{name}.py").write_text(text)
        results = run_all(Path(folder), chosen, args.timeout, out)
    print(summary(results))


if __name__ == "__main__":
    main()
