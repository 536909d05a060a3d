"""The GPU check: one command that a machine with an NVIDIA GPU (and cupy) runs to see that device
'cuda' is right and how fast it is.

    python tools/gpu_check.py            # on the GPU: a few minutes on an H200
    python tools/gpu_check.py --tiny     # anywhere: tiny models on numba's CUDA simulator (tests use it)

1. kernels: every case of tests/test_cuda.py on the device, against numpy;
2. LLM: kuiper's logits on 'cuda' against transformers (SmolLM2-135M, the same GGUF file);
3. CNNs: every zoo model in data/models on 'cuda' against its TorchScript export run by torch
   (resnet18, mobilenet_v2, yolov5n, yolov5s, ...); layers without a GPU kernel are listed;
4. benchmark: kuiper 'cuda' against torch 'cuda' (resnet18, yolov5s) and transformers 'cuda'
   (SmolLM2 prefill and decode), medians after warm-up, with ratios (goal: >= 1.0 x).

Parity passes at max |kuiper - reference| <= 1e-4 of max |reference| (TF32 is switched off in torch).
The last line says PASS or FAIL; the exit status is 0 only on PASS. With --tiny the models are built
here (a small CNN from every GPU layer kind, a 2-layer Llama) and the timings are the simulator's.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python tools/gpu_check.py`
    sys.path.insert(0, str(ROOT))

TOLERANCE = 1e-4  # max |got - want| / max |want|, fp32
KERNEL_TOLERANCE = 1e-5  # tests/test_cuda.py's, for single kernels on tiny inputs
SMOLLM2 = "smollm2-135m-instruct-q4_1.gguf"


def relative_error(got: object, want: object) -> float:
    """max |got - want| / max |want| over arrays of the same shape (inf when the shapes differ)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    """The median wall time of fn() over `repeat` runs, after two warm-up runs (compilation, autotuning)."""
    fn(), fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Report:
    """Rows of (section, name, verdict or number, note), printed as they come; failed() after the end."""

    def __init__(self):
        self.failures: list[str] = []

    def parity(self, section: str, name: str, error: float | str, note: str = "", tolerance: float = TOLERANCE) -> None:
        """One parity row: ok when `error` (a relative error, or the text of what went wrong) is within tolerance."""
        ok = not isinstance(error, str) and error <= tolerance
        if not ok:
            self.failures.append(f"{section} {name}")
        shown = error if isinstance(error, str) else f"{error:.1e}"
        print(f"  {'ok  ' if ok else 'FAIL'} {name:34s} {shown}{'  ' + note if note else ''}", flush=True)

    def attempt(self, section: str, name: str, error: Callable[[], float], note: str = "") -> None:
        """parity(error()); an exception is a failed row that says what it was, and the check goes on."""
        try:
            value = error()
        except Exception as err:  # one broken model must not hide the others' results
            value = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
        self.parity(section, name, value, note)


# ---- the models ---------------------------------------------------------------------------------

def tiny_cnn(torch):
    """(a kuiper graph, a torch module) of one small CNN with the same weights, using every GPU layer kind:
    conv 3×3 + SiLU, depthwise conv + ReLU6, max pool, conv 1×1 + Hardswish, nearest upsampling, concat,
    split, an expression (add), global average pooling, flatten, linear; and a YOLO-like second output:
    reshape, permute, a constant (pnnx.Attribute) added."""
    from kuiper.graph import RuntimeGraph
    from kuiper.pnnx import Attribute, link_operands, Operator, PnnxGraph
    from kuiper.registry import create_layer

    nn, gen = torch.nn, torch.Generator().manual_seed(0)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.depthwise = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=4)
            self.point = nn.Conv2d(8, 4, 1)
            self.head = nn.Linear(4, 5)
            self.anchor = nn.Parameter(torch.zeros(1, 2, 4, 4, 2))
            for p in self.parameters():
                p.data = torch.randn(p.shape, generator=gen) * 0.5

        def forward(self, x):
            a = nn.functional.silu(self.conv(x))
            b = nn.functional.relu6(self.depthwise(a))
            c = nn.functional.hardswish(self.point(nn.functional.max_pool2d(b, 3, 1, 1)))
            up = nn.functional.interpolate(c, scale_factor=2, mode="nearest")
            left, right = torch.split(torch.cat([up, a], 1), [4, 4], 1)
            pooled = nn.functional.adaptive_avg_pool2d(left + right, 1)
            grid = c.reshape(-1, 2, 2, 4, 4).permute(0, 1, 3, 4, 2)  # a YOLO head's (N, anchors, H, W, outputs)
            return self.head(torch.flatten(pooled, 1)), grid + self.anchor

    module = Tiny().eval()

    def conv(name, m, groups=1):
        params = {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": m.kernel_size,
                  "stride": m.stride, "padding": m.padding, "dilation": m.dilation, "groups": groups, "bias": True}
        return params, {"weight": m.weight, "bias": m.bias}

    rows = [  # type, name, inputs, outputs, params, weights
        ("pnnx.Input", "in", [], ["x"], {}, {}),
        ("nn.Conv2d", "conv", ["x"], ["c1"], *conv("conv", module.conv)),
        ("nn.SiLU", "silu", ["c1"], ["a"], {}, {}),
        ("nn.Conv2d", "depthwise", ["a"], ["d1"], *conv("depthwise", module.depthwise, 4)),
        ("nn.ReLU6", "relu6", ["d1"], ["b"], {}, {}),
        ("nn.MaxPool2d", "pool", ["b"], ["p"], {"kernel_size": 3, "stride": 1, "padding": 1}, {}),
        ("nn.Conv2d", "point", ["p"], ["c2"], *conv("point", module.point)),
        ("nn.Hardswish", "hardswish", ["c2"], ["c"], {}, {}),
        ("nn.Upsample", "up", ["c"], ["u"], {"mode": "nearest", "scale_factor": (2.0, 2.0)}, {}),
        ("torch.cat", "cat", ["u", "a"], ["cat"], {"dim": 1}, {}),
        ("torch.split", "split", ["cat"], ["left", "right"], {"dim": 1, "split_size_or_sections": (4, 4)}, {}),
        ("pnnx.Expression", "add", ["left", "right"], ["sum"], {"expr": "add(@0,@1)"}, {}),
        ("nn.AdaptiveAvgPool2d", "gap", ["sum"], ["g"], {"output_size": (1, 1)}, {}),
        ("torch.flatten", "flatten", ["g"], ["f"], {"start_dim": 1, "end_dim": -1}, {}),
        ("nn.Linear", "head", ["f"], ["y"], {"in_features": 4, "out_features": 5, "bias": True},
         {"weight": module.head.weight, "bias": module.head.bias}),
        ("pnnx.Output", "out", ["y"], [], {}, {}),
        ("Tensor.reshape", "reshape", ["c"], ["r"], {"shape": (1, 2, 2, 4, 4)}, {}),
        ("Tensor.permute", "permute", ["r"], ["grid"], {"dims": (0, 1, 3, 4, 2)}, {}),
        ("pnnx.Attribute", "anchor", [], ["anchor"], {}, {"data": module.anchor}),
        ("pnnx.Expression", "shift", ["grid", "anchor"], ["z"], {"expr": "add(@0,@1)"}, {}),
        ("pnnx.Output", "out2", ["z"], [], {}, {}),
    ]
    operators = [Operator(kind, name, inputs, outputs, params,
                          {k: Attribute(tuple(w.shape), "float32", w.detach().numpy()) for k, w in weights.items()},
                          line=line)
                 for line, (kind, name, inputs, outputs, params, weights) in enumerate(rows, start=3)]
    path = Path("tiny_cnn.pnnx.param")
    return RuntimeGraph(PnnxGraph(path, operators, link_operands(operators, path)), create_layer), module


TINY_LLAMA = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 48, "vocab_size": 64, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
              "tie_word_embeddings": False}
SMOLLM2_SHAPE = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                 "intermediate_size": 1536, "vocab_size": 49152, "max_position_embeddings": 8192,
                 "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True}  # SmolLM2-135M's config


def random_llama(torch, folder: Path, shape: dict) -> Path:
    """A Llama of `shape` with transformers' random initialisation, written as a Hugging Face folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**shape)).save_pretrained(folder, safe_serialization=True)
    return folder


def with_random_weights(param: Path, folder: Path) -> Path:
    """A copy of `param` in `folder` beside a .pnnx.bin of random weights (He-scaled, biases 0): what a GPU
    machine runs when the zoo's weights are too big to carry there. Returns the copy's path."""
    import zipfile

    from kuiper.pnnx import read_param

    rng, copy = np.random.default_rng(0), folder / param.name
    copy.write_text(param.read_text())
    with zipfile.ZipFile(copy.with_name(param.name.removesuffix(".param") + ".bin"), "w") as archive:
        for op in read_param(param).operators:
            for key, attr in op.attrs.items():
                fan_in = int(np.prod(attr.shape[1:])) if len(attr.shape) > 1 else 0
                data = (rng.standard_normal(attr.shape) * np.sqrt(2 / fan_in) if fan_in
                        else np.zeros(attr.shape) if key == "bias" else rng.random(attr.shape))
                archive.writestr(f"{op.name}.{key}", data.astype(attr.dtype).tobytes())
    return copy


def model_input(param: Path) -> np.ndarray:
    """The zoo's stored input beside `param`, else a seeded uniform one of the shape its pnnx.Input declares."""
    from kuiper.pnnx import read_param

    stored = param.with_name(param.name.removesuffix(".pnnx.param") + ".input.npy")
    if stored.is_file():
        return np.load(stored)
    graph = read_param(param)
    shape = next(graph.operands[op.outputs[0]].shape for op in graph.operators if op.type == "pnnx.Input")
    return np.random.default_rng(0).random(shape, dtype=np.float32)


def outputs(value: object) -> list[np.ndarray]:
    """A model's output (an array, a tensor, or a tuple/list of them) as a list of numpy arrays."""
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in outputs(v)]
    from kuiper.cuda.device import to_device

    return [value.detach().cpu().numpy() if hasattr(value, "detach") else to_device(value, "cpu")]


def cnn_error(got: object, want: object) -> float:
    """The largest relative error over a model's outputs."""
    got, want = outputs(got), outputs(want)
    return max(relative_error(g, w) for g, w in zip(got, want)) if len(got) == len(want) else float("inf")


# ---- the checks ---------------------------------------------------------------------------------

def check_kernels(report: Report) -> None:
    """Every kernel case of tests/test_cuda.py, run on device 'cuda' (the simulator with --tiny)."""
    from kuiper.cuda.device import to_device
    from tests.test_cuda import CASES, run_case

    print("kernels (against numpy):", flush=True)
    for name in CASES:
        error = run_case(name, lambda a: to_device(a, "cuda"))
        report.parity("kernel", name, error, tolerance=KERNEL_TOLERANCE)


def fallback_note(graph) -> str:
    """Which layers of a placed graph run on the host, if any."""
    from kuiper.cuda.layers import HostFallback

    host = sorted({layer.layer.op.type for layer in graph.layers.values() if isinstance(layer, HostFallback)})
    return f"(on the host: {', '.join(host)})" if host else ""


def check_cnns(report: Report, torch, device: str, tiny: bool, models: Path, folder: Path) -> dict[str, tuple]:
    """Every CNN in `models` on 'cuda' against kuiper's CPU path (itself checked against torch in the
    tests), against torch's output stored at export when the real weights are there, and against the
    TorchScript export run by torch on `device` when it is there; a model without its .pnnx.bin runs
    with random weights. --tiny: tiny_cnn against torch, and data/tiny.
    Returns {name: (graph on 'cuda', torch module or None, input)} for the benchmark."""
    import kuiper

    print(f"CNNs on 'cuda' (against kuiper on the CPU, and torch on {device!r}):", flush=True)
    found = {}
    if tiny:
        graph, module = tiny_cnn(torch)
        x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
        found["tiny_cnn"] = (graph.to("cuda"), module.to(device), x)

        def tiny_error() -> float:
            with torch.inference_mode():
                return cnn_error(graph(x), module(torch.from_numpy(x).to(device)))

        report.attempt("cnn", "tiny_cnn vs torch", tiny_error, fallback_note(graph))
    for param in [ROOT / "data" / "tiny.pnnx.param"] if tiny else sorted(models.glob("*.pnnx.param")):
        name = param.name.removesuffix(".pnnx.param")
        real = param.with_name(f"{name}.pnnx.bin").is_file()
        path = param if real else with_random_weights(param, folder)
        x, script = model_input(param), param.with_name(f"{name}.torchscript.pt")
        on_cpu, graph = kuiper.load(path), kuiper.load(path).to("cuda")
        module = torch.jit.load(str(script), map_location=device).eval() if real and script.is_file() else None
        found[name] = (graph, module, x)
        label = name if real else f"{name} (random weights)"
        report.attempt("cnn", f"{label} vs kuiper cpu", lambda g=graph, c=on_cpu, x=x: cnn_error(g(x), c(x)),
                       fallback_note(graph))
        stored = param.with_name(f"{name}.output.npy")
        if real and stored.is_file():
            report.attempt("cnn", f"{label} vs torch (export)", lambda g=graph, x=x: cnn_error(g(x), np.load(stored)))
        if module is not None:
            try:
                with torch.inference_mode():
                    want = outputs(module(torch.from_numpy(x).to(device)))
            except Exception as err:  # the reference, not kuiper, failed: say so, count nothing
                print(f"  skip {label} vs torch {device}: torch cannot run the export there: {type(err).__name__}")
                found[name] = (graph, None, x)
                continue
            report.attempt("cnn", f"{label} vs torch {device}", lambda g=graph, w=want, x=x: cnn_error(g(x), w))
    return found


def torch_model(torch, name: str, module: object, device: str) -> object:
    """The torch model to time against: the TorchScript export, else the repo's own architecture
    (tools/architectures.py, random weights: the same layers and the same work)."""
    if module is not None or name not in ("resnet18", "yolov5s"):
        return module
    from tools import architectures

    torch.manual_seed(0)
    build = architectures.resnet18 if name == "resnet18" else lambda: architectures.yolov5("s")
    return build().eval().to(device)


def check_llm(report: Report, torch, device: str, tiny: bool, models: Path, folder: Path) -> Path | None:
    """kuiper's logits on 'cuda' against transformers on `device`, prefill and one decode step."""
    from transformers import AutoModelForCausalLM

    from kuiper.llm.model import load

    import importlib.util

    path = models / SMOLLM2
    if tiny:
        path = random_llama(torch, folder / "tiny_llama", TINY_LLAMA)
    elif not (path.is_file() and importlib.util.find_spec("gguf")):  # transformers reads GGUF with `gguf`
        path = random_llama(torch, folder / "smollm2_shape_random", SMOLLM2_SHAPE)
    print(f"LLM on 'cuda' (against transformers on {device!r}):", flush=True)
    kwargs = {"gguf_file": path.name} if path.suffix == ".gguf" else {}
    reference = AutoModelForCausalLM.from_pretrained(path.parent if kwargs else path, dtype=torch.float32,
                                                     **kwargs).eval().to(device)
    model, _ = load(path, max_seq_len=32)
    model.to("cuda")
    ids = [1, 5, 9, 13, 17, 21]
    with torch.inference_mode():
        want = reference(torch.tensor([ids + [3]], device=device)).logits[0].cpu().numpy()
    prefill = model.forward(np.array(ids), 0, all_logits=True)
    step = model.forward(np.array([3]), len(ids))
    report.parity("llm", f"{path.name} prefill logits", relative_error(outputs(prefill)[0], want[:-1]))
    report.parity("llm", f"{path.name} decode logits", relative_error(outputs(step)[0], want[-1:]))
    return path


def benchmark(torch, device: str, cnns: dict[str, tuple], llm: Path | None, tiny: bool) -> None:
    """kuiper 'cuda' against torch / transformers on `device`: medians, and kuiper's speed as a ratio."""
    from kuiper import bench

    repeat = 3 if tiny else 20
    print(f"\nbenchmark ({'numba simulator: not GPU timings' if tiny else torch.cuda.get_device_name()}), "
          f"speed = reference time / kuiper time, goal >= 1.0 x", flush=True)
    print(f"  {'model':28s} {'kuiper ms':>10s} {'ref ms':>10s} {'speed':>7s}")
    wanted = ["tiny_cnn"] if tiny else ["resnet18", "yolov5s"]
    for name in (n for n in wanted if n in cnns):
        graph, module, x = cnns[name]
        try:
            module = torch_model(torch, name, module, device)
        except Exception as err:  # the other rows still get timed
            print(f"  {name:28s} failed: no torch model: {type(err).__name__}: {err}", flush=True)
            continue
        for batch in (1, 2) if tiny else (1, 8):
            xb = np.repeat(x[:1], batch, axis=0)

            def reference() -> None:
                with torch.inference_mode():
                    outputs(module(torch.from_numpy(xb).to(device)))

            try:
                ours, theirs = median_seconds(lambda: graph(xb), repeat), median_seconds(reference, repeat)
            except Exception as err:  # the other rows still get timed
                print(f"  {f'{name} batch {batch}':28s} failed: {type(err).__name__}: {err}", flush=True)
                continue
            print(f"  {f'{name} batch {batch}':28s} {ours * 1e3:10.2f} {theirs * 1e3:10.2f} {theirs / ours:6.2f}x",
                  flush=True)
    if llm is not None:
        from kuiper.llm.model import load

        prompt, decode = (4, 2) if tiny else (64, 64)
        model, _ = load(llm, max_seq_len=prompt + decode + 8)
        ids = [int(i) for i in np.random.default_rng(0).integers(0, model.config.vocab_size, prompt)]
        try:
            ours = bench.kuiper_rates(model.to("cuda"), ids, decode)
            theirs = bench.transformers_rates(llm, ids, decode, device)
        except Exception as err:
            print(f"  {llm.name[:28]:28s} failed: {type(err).__name__}: {err}", flush=True)
            return
        for phase, mine, ref, tokens in [("prefill", ours[0], theirs[0], prompt),
                                         ("decode", ours[1], theirs[1], decode)]:
            print(f"  {f'{llm.name[:20]} {phase}':28s} {tokens / mine:8.1f}/s {tokens / ref:8.1f}/s "
                  f"{ref / mine:6.2f}x", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on numba's CUDA simulator (no GPU needed)")
    parser.add_argument("--models", type=Path, default=ROOT / "data" / "models", help="the zoo's folder")
    parser.add_argument("--no-bench", action="store_true", help="parity only")
    args = parser.parse_args(argv)
    if args.tiny:
        from kuiper.cuda.device import use_simulator

        use_simulator()
    from kuiper.cuda.device import cuda_problem, simulating

    if not simulating() and cuda_problem():
        print(f"gpu_check: no GPU here: {cuda_problem()} (python tools/gpu_check.py --tiny runs on the simulator)")
        return 1
    import torch
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 on both sides
    logging.basicConfig(format="  note: %(message)s", level=logging.WARNING)
    report, start = Report(), time.perf_counter()
    steps: dict[str, object] = {}

    def step(name: str, fn: Callable[[], object]) -> None:
        """Run one step; an exception fails it, says what it was, and the next step still runs."""
        try:
            steps[name] = fn()
        except Exception as err:
            report.parity(name, "(the whole step)", f"{type(err).__name__}: {' '.join(str(err).split())[:300]}")

    step("kernels", lambda: check_kernels(report))
    with tempfile.TemporaryDirectory() as folder:
        step("llm", lambda: check_llm(report, torch, device, args.tiny, args.models, Path(folder)))
        step("cnns", lambda: check_cnns(report, torch, device, args.tiny, args.models, Path(folder)))
        if not args.no_bench:
            step("benchmark", lambda: benchmark(torch, device, steps.get("cnns") or {}, steps.get("llm"), args.tiny))
    verdict = "FAIL: " + ", ".join(report.failures) if report.failures else "PASS"
    print(f"\ngpu_check {verdict} ({time.perf_counter() - start:.0f} s, simulated: {simulating()})")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
