"""Two graphs run in two threads at once give exactly what they give one after the other."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import kuiper

MODELS = Path(__file__).resolve().parents[1] / "data" / "models"


def test_two_resnets_in_two_threads_match_sequential_runs():
    graphs = [kuiper.load(MODELS / "resnet18.pnnx.param") for _ in range(2)]
    g = np.random.default_rng(0)
    inputs = [g.standard_normal((2, 3, 224, 224), dtype=np.float32) for _ in range(8)]
    want = [graphs[0](x) for x in inputs]

    def run(worker: int) -> list[np.ndarray]:
        return [graphs[worker](x) for x in inputs[worker::2]]

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(run, range(2))
    got = [None] * len(inputs)
    got[0::2], got[1::2] = first, second
    errors = [float(np.abs(a - b).max()) for a, b in zip(got, want)]
    assert errors == [0.0] * len(inputs), errors
