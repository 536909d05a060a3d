"""kuiper.bench's LLM table: the same-run ratios issue 18's goals are stated in (no timing here)."""

from kuiper.bench import LLMBench, LLMRow, format_llm_rows


def bench(*rows: LLMRow) -> LLMBench:
    return LLMBench("m.gguf", list(rows), weight_bytes=500, bandwidth=10_000.0, peak_rss=2**30, int8_weight_bytes=125)


def test_goals_are_ratios_of_rows_in_the_same_run():
    result = bench(LLMRow("kuiper", "fp32", 300.0, 17.0), LLMRow("kuiper", "int8 g32", 330.0, 51.0),
                   LLMRow("transformers", "fp32", 400.0, 10.0), LLMRow("llama.cpp", "F32", 200.0, 20.0),
                   LLMRow("llama.cpp", "Q8_0", 660.0, 60.0))
    goals = result.goals()
    assert goals == {"fp32_decode_of_bound": 17.0 * 500 / 10_000, "int8_decode_of_bound": 51.0 * 125 / 10_000,
                     "int8_decode_vs_fp32": 3.0, "int8_prefill_vs_fp32": 1.1,
                     "fp32_prefill_vs_transformers": 0.75, "fp32_decode_vs_transformers": 1.7,
                     "fp32_prefill_vs_llama.cpp": 1.5, "fp32_decode_vs_llama.cpp": 0.85,
                     "int8_prefill_vs_llama.cpp_Q8_0": 0.5, "int8_decode_vs_llama.cpp_Q8_0": 0.85}
    text = format_llm_rows(result)
    assert "decode bound 20.0 tok/s" in text and "peak RSS 1024 MiB" in text
    assert "fp32_decode_of_bound 0.85" in text and "int8_decode_vs_fp32 3.00" in text
    assert result.as_json()["goals"]["int8_prefill_vs_fp32"] == 1.1


def test_goals_leave_out_what_was_not_run():
    goals = bench(LLMRow("kuiper", "fp32", 300.0, 17.0)).goals()
    assert list(goals) == ["fp32_decode_of_bound"]
    assert "same-run ratios" not in format_llm_rows(bench(LLMRow("transformers", "fp32", 1.0, 1.0)))


def test_rates_reads_between_the_runs_it_times():
    from kuiper.bench import rates

    calls: list[str] = []
    rates(lambda: calls.append("prefill"), lambda i: calls.append(f"step {i}"), 2, passes=2,
          between=lambda: calls.append("read"))
    assert calls == ["prefill", "step 0", "step 1", "read"] * 2


def test_the_bound_reads_the_buffer_the_model_streams(tmp_path):
    import numpy as np

    from llm_files import write_gguf

    from kuiper.bench import read_bandwidth, weight_buffer
    from kuiper.llm.gguf import GGUFFile
    from kuiper.llm.model import model_from_gguf

    model = model_from_gguf(GGUFFile(write_gguf(tmp_path / "tiny.gguf")))
    buffer = weight_buffer(model)
    start, end = buffer.ctypes.data, buffer.ctypes.data + buffer.nbytes
    matrices = [model.head] + [getattr(b, name) for b in model.blocks for name in ("wqkv", "wo", "w_gate_up", "w_down")]
    assert all(start <= m.ctypes.data and m.ctypes.data + m.nbytes <= end for m in matrices)
    assert buffer.dtype == np.float32 and buffer.nbytes >= sum(m.nbytes for m in matrices)
    assert weight_buffer(type("Unpacked", (), {"head": np.ones((4, 4), np.float32)})()) is None
    assert read_bandwidth(buffer, repeat=1) > 0
