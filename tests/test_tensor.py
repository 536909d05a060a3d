"""kuiper.Tensor against numpy and PyTorch: construction, memory order, padding, broadcasting, errors."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import kuiper
from kuiper.tensor import DTYPES, Tensor, broadcast_shapes, resolve_shape

LESSON = 1  # kuiper grade runs this file on the student build of lesson 01

shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5)


def test_numpy_arrays_are_wrapped_without_a_copy():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = Tensor(array)
    array[1, 2] = -7
    assert t[1, 2] == -7
    assert np.asarray(t) is array
    assert np.shares_memory(np.array(t, copy=False), array)
    assert not np.shares_memory(np.array(t, copy=True), array)


def test_float64_becomes_float32_and_supported_dtypes_are_kept():
    assert Tensor([1.5, 2.5]).dtype == np.float32
    assert Tensor(np.zeros(3)).dtype == np.float32
    for name in DTYPES:
        assert Tensor.zeros(2, dtype=name).dtype == np.dtype(name)
    assert Tensor(np.ones(2, np.int8)).dtype == np.int8


@pytest.mark.parametrize("dtype", ["float64", "complex64", "object", "not-a-type"])
def test_unsupported_dtype_names_the_choices(dtype):
    with pytest.raises(kuiper.DTypeError, match="expected one of float32, float16, int8"):
        Tensor.zeros(2, dtype=dtype)


def test_constructors():
    assert Tensor.zeros(2, 3).numpy().tolist() == [[0, 0, 0], [0, 0, 0]]
    assert Tensor.ones(4).numpy().sum() == 4
    assert Tensor.full((2, 2), 7, dtype="int8").numpy().tolist() == [[7, 7], [7, 7]]
    assert np.array_equal(Tensor.rand(3, 4, seed=5).numpy(), Tensor.rand(3, 4, seed=5).numpy())
    assert not np.array_equal(Tensor.randn(3, 4, seed=5).numpy(), Tensor.randn(3, 4, seed=6).numpy())
    r = Tensor.rand(1000, seed=0).numpy()
    assert r.dtype == np.float32 and 0 <= r.min() and r.max() < 1


@pytest.mark.parametrize("shape, expected", [
    ((8, 3, 224, 224), (3, 224, 224)), ((3, 4, 5), (3, 4, 5)), ((4, 5), (1, 4, 5)), ((7,), (1, 1, 7)), ((), (1, 1, 1)),
])
def test_channels_rows_cols_follow_kuiperinfer(shape, expected):
    t = Tensor.zeros(*shape)
    assert (t.channels, t.rows, t.cols) == expected
    assert t.shape == shape and t.size == int(np.prod(shape)) and t.ndim == len(shape)


def test_fill_row_and_column_major():
    t = Tensor.zeros(2, 2, 3)
    t.fill(range(12))
    assert np.array_equal(t.numpy(), np.arange(12).reshape(2, 2, 3))
    t.fill(range(12), row_major=False)
    assert np.array_equal(t.numpy(), np.arange(12).reshape((2, 2, 3), order="F"))
    with pytest.raises(kuiper.ShapeError, match="fill needs 12 values for shape \\(2, 2, 3\\), got 13"):
        t.fill(range(13))


@given(shapes, st.data())
def test_reshape_matches_torch_and_numpy_order(shape, data):
    x = Tensor.randn(*shape, seed=0)
    target = tuple(data.draw(st.permutations(shape)))
    assert np.array_equal(x.reshape(*target).numpy(), torch.from_numpy(x.numpy()).reshape(target).numpy())
    assert np.array_equal(x.reshape(*target, row_major=False).numpy(), x.numpy().reshape(target, order="F"))
    assert np.array_equal(x.flatten(row_major=False).numpy(), x.numpy().ravel(order="F"))


def test_reshape_infers_minus_one_and_rejects_bad_shapes():
    assert Tensor.zeros(2, 6).reshape(3, -1).shape == (3, 4)
    with pytest.raises(kuiper.ShapeError, match=r"cannot reshape \(3, 4\) \(12 elements\) to \(5, 2\) \(10 elements\)"):
        Tensor.zeros(3, 4).reshape(5, 2)
    with pytest.raises(kuiper.ShapeError, match="at most one -1"):
        Tensor.zeros(4).reshape(-1, -1)
    with pytest.raises(kuiper.ShapeError, match=r"to \(5, -1\)"):
        Tensor.zeros(12).reshape(5, -1)
    assert resolve_shape((2, 0), (0, 3)) == (2, 0)


@given(hnp.array_shapes(min_dims=2, max_dims=4, max_side=5), st.tuples(*[st.integers(0, 3)] * 4),
       st.floats(-5, 5, width=32))
def test_pad_matches_torch(shape, pads, value):
    x = Tensor.randn(*shape, seed=1)
    top, bottom, left, right = pads
    want = torch.nn.functional.pad(torch.from_numpy(x.numpy()), (left, right, top, bottom), value=value)
    assert np.array_equal(x.pad(top, bottom, left, right, value).numpy(), want.numpy())


@pytest.mark.parametrize("call, message", [
    (lambda: Tensor.zeros(2, 2).pad(-1, 0, 0, 0), "padding must be >= 0, got top=-1"),
    (lambda: Tensor.zeros(5).pad(1, 1, 1, 1), r"at least 2 dimensions \(rows, cols\), got shape \(5,\)"),
])
def test_pad_errors(call, message):
    with pytest.raises(kuiper.ShapeError, match=message):
        call()


def test_transform_applies_a_vectorized_function_and_keeps_dtype():
    t = Tensor([[-1.0, 2.0]], dtype="float16")
    out = t.transform(lambda a: np.maximum(a, 0) * 3)
    assert out.dtype == np.float16 and out.numpy().tolist() == [[0, 6]]
    with pytest.raises(kuiper.ShapeError, match=r"keep the shape \(1, 2\).*returned \(2,\)"):
        t.transform(np.ravel)


@given(shapes, shapes)
def test_broadcast_shapes_matches_numpy(a, b):
    try:
        want = np.broadcast_shapes(a, b)
    except ValueError:
        with pytest.raises(kuiper.ShapeError, match="cannot broadcast"):
            broadcast_shapes(a, b)
    else:
        assert broadcast_shapes(a, b) == want


@pytest.mark.parametrize("a, b", [((2, 1, 4), (3, 1)), ((8, 3, 5, 5), (3, 1, 1)), ((1,), (4, 4)), ((), (2,))])
@pytest.mark.parametrize("op", ["__add__", "__sub__", "__mul__", "__truediv__"])
def test_elementwise_matches_torch(a, b, op):
    x, y = Tensor.randn(*a, seed=2), Tensor.rand(*b, seed=3) + 0.5
    got = getattr(x, op)(y).numpy()
    want = getattr(torch.from_numpy(x.numpy()), op)(torch.from_numpy(y.numpy())).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


def test_scalars_and_reflected_operators():
    t = Tensor([1.0, 2.0])
    assert (2 * t + 1).numpy().tolist() == [3, 5]
    assert (1 + t).numpy().tolist() == [2, 3]
    assert (-t).numpy().tolist() == [-1, -2]
    assert (t / 2).dtype == np.float32


def test_mismatched_broadcast_names_both_shapes():
    with pytest.raises(kuiper.ShapeError, match=r"cannot broadcast \(2, 3\) with \(4, 3\): dimension -2 is 2 vs 4"):
        Tensor.ones(2, 3) + Tensor.ones(4, 3)


def test_indexing_views_and_clone_copies():
    t = Tensor(np.arange(12).reshape(3, 4))
    view = t[1]
    view[0] = 100
    assert t[1, 0] == 100 and isinstance(t[1, 0], int)
    c = t.clone()
    c[0, 0] = -1
    assert t[0, 0] == 0
    t[2] = Tensor([9, 9, 9, 9])
    assert t.numpy()[2].tolist() == [9, 9, 9, 9] and len(t) == 3
    assert t[t.numpy() > 8].numpy().tolist() == [100, 9, 9, 9, 9]


def test_astype_and_repr():
    t = Tensor([1.7, -3.2, 200.0])
    assert t.astype("float16").dtype == np.float16
    assert t.astype("int32").numpy().tolist() == [1, -3, 200]
    assert repr(Tensor.zeros(2)) == "Tensor(shape=(2,), dtype=float32, device='cpu')\n[0. 0.]"


def test_devices():
    t = Tensor.ones(2)
    assert t.to("cpu") is t and t.device == "cpu"
    with pytest.raises(kuiper.DeviceError, match="unknown device 'tpu': expected one of cpu"):
        t.to("tpu")
    with pytest.raises(kuiper.DeviceError):
        Tensor.zeros(2, device="tpu")


def test_every_error_is_a_kuiper_error_and_a_builtin_one():
    assert issubclass(kuiper.ShapeError, kuiper.KuiperError) and issubclass(kuiper.ShapeError, ValueError)
    assert issubclass(kuiper.DTypeError, TypeError) and issubclass(kuiper.DeviceError, kuiper.KuiperError)
