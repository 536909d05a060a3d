# Generated from solutions/03_registry.py, solutions/04_conv_pooling.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import numpy as np

from kuiper.errors import LayerError
from kuiper.layer import Layer
from kuiper.registry import register
from kuiper.tensor import Tensor


@register("torch.flatten")
class Flatten(Layer):
    """Merge dimensions start_dim..end_dim into one."""

    def __init__(self, op):
        super().__init__(op)
        self.start, self.end = self.param("start_dim", int, 0), self.param("end_dim", int, -1)

    def forward(self, x: Tensor) -> Tensor:
        start, end = self.start % x.ndim, self.end % x.ndim
        return x.reshape(*x.shape[:start], -1, *x.shape[end + 1:])


@register("torch.cat")
class Concat(Layer):
    """Join the inputs along dimension `dim`."""

    def __init__(self, op):
        super().__init__(op)
        self.dim = self.param("dim", int)
        if not op.inputs:
            raise LayerError(f"{op.where()}: torch.cat needs at least one input")

    def forward(self, *xs: Tensor) -> Tensor:
        return Tensor(np.concatenate([x.numpy() for x in xs], axis=self.dim), device=xs[0].device)


def batch_shape(shape: tuple[int, ...], x: Tensor) -> tuple[int, ...]:
    """`shape` from the .param file, its exported batch of 1 replaced by x's batch when that fits."""
    if shape and shape[0] == 1 and x.shape[0] != 1 and int(np.prod(shape)) * x.shape[0] == x.size:
        return (x.shape[0], *shape[1:])
    return shape


@register("Tensor.view", "Tensor.reshape", "torch.reshape")
class Reshape(Layer):
    """The same elements in a new shape (row-major), with the batch dimension kept free."""

    def __init__(self, op):
        super().__init__(op)
        self.shape = self.param("shape", tuple)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(*batch_shape(self.shape, x))


@register("Tensor.permute", "torch.permute")
class Permute(Layer):
    """Reorder the dimensions."""

    def __init__(self, op):
        super().__init__(op)
        self.dims = self.param("dims", tuple)

    def forward(self, x: Tensor) -> Tensor:
        return Tensor(np.transpose(x.numpy(), self.dims), device=x.device)


@register("torch.transpose", "Tensor.transpose")
class Transpose(Layer):
    """Swap two dimensions."""

    def __init__(self, op):
        super().__init__(op)
        self.dims = self.param("dim0", int), self.param("dim1", int)

    def forward(self, x: Tensor) -> Tensor:
        return Tensor(np.swapaxes(x.numpy(), *self.dims), device=x.device)


@register("torch.split", "Tensor.split", "torch.chunk", "Tensor.chunk", "torch.tensor_split")
class Split(Layer):
    """Cut along `dim` into pieces of a size, of given sizes, or into a number of chunks."""

    def __init__(self, op):
        super().__init__(op)
        self.dim = self.param("dim", int, 0)
        if op.type.endswith("chunk"):
            self.chunks, self.sizes = self.param("chunks", int, minimum=1), None
        else:
            key = ("sections" if "sections" in op.params else "indices") if op.type == "torch.tensor_split" else (
                "split_size_or_sections" if "split_size_or_sections" in op.params else "split_size")
            self.chunks, self.sizes = None, self.param(key, (int, tuple), minimum=1)
            if isinstance(self.sizes, tuple) and key != "indices" and not all(type(n) is int and n >= 0 for n in self.sizes):
                raise LayerError(f"{op.where()}: {key} should be ints >= 0, got {self.sizes!r}")
        self.tensor_split = op.type == "torch.tensor_split"

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        data, length = x.numpy(), x.shape[self.dim]
        if self.tensor_split:  # n sections: the first length % n one longer, as np.array_split
            cuts = self.sizes if isinstance(self.sizes, int) else list(self.sizes)
            return tuple(Tensor(part, device=x.device) for part in np.array_split(data, cuts, axis=self.dim))
        elif self.chunks is not None:
            step = -(-length // self.chunks)
            cuts = list(range(step, length, step))
        elif isinstance(self.sizes, int):
            cuts = list(range(self.sizes, length, self.sizes))
        else:
            cuts = list(np.cumsum(self.sizes)[:-1])
        return tuple(Tensor(part, device=x.device) for part in np.split(data, cuts, axis=self.dim))


INT_MAX = 2**31 - 1


@register("Tensor.slice")
class Slice(Layer):
    """x[start:end:step] along one dimension, or several (dims, starts, ends, steps)."""

    def __init__(self, op):
        super().__init__(op)
        if "dims" in op.params:
            self.dims, self.starts = self.param("dims", tuple), self.param("starts", tuple)
            self.ends, self.steps = self.param("ends", tuple), self.param("steps", tuple)
        else:
            self.dims, self.starts = (self.param("dim", int),), (self.param("start", int, 0),)
            self.ends, self.steps = (self.param("end", int),), (self.param("step", int, 1),)
        # x[0] inside a slice: PNNX lists an index per dim in `selects` (one dim: `select`), INT_MAX where it slices
        self.selects = self.param("selects", tuple, (self.param("select", int, INT_MAX),) * len(self.dims))
        if not all(type(step) is int and step >= 1 for step, select in zip(self.steps, self.selects) if select == INT_MAX):
            raise LayerError(f"{op.where()}: every step of a sliced dimension should be an int >= 1, got {self.steps!r}")

    def forward(self, x: Tensor) -> Tensor:
        index = [slice(None)] * x.ndim
        for dim, start, end, step, select in zip(self.dims, self.starts, self.ends, self.steps, self.selects):
            index[dim] = slice(start, end, step) if select == INT_MAX else select
        return Tensor(x.numpy()[tuple(index)], device=x.device)


@register("torch.squeeze", "Tensor.squeeze")
class Squeeze(Layer):
    """Drop size-1 dimensions (all, or `dim`)."""

    def __init__(self, op):
        super().__init__(op)
        self.dim = self.param("dim", (int, tuple, type(None)), None)

    def forward(self, x: Tensor) -> Tensor:
        data = x.numpy()
        dims = (self.dim,) if isinstance(self.dim, int) else self.dim
        if dims is not None:
            dims = tuple(d for d in dims if data.shape[d] == 1)
        return Tensor(np.squeeze(data, axis=dims), device=x.device)


@register("torch.unsqueeze", "Tensor.unsqueeze")
class Unsqueeze(Layer):
    """Insert a size-1 dimension at `dim`."""

    def __init__(self, op):
        super().__init__(op)
        self.dim = self.param("dim", int)

    def forward(self, x: Tensor) -> Tensor:
        return Tensor(np.expand_dims(x.numpy(), self.dim), device=x.device)


@register("torch.stack")
class Stack(Layer):
    """Stack the inputs along a new dimension `dim`."""

    def __init__(self, op):
        super().__init__(op)
        self.dim = self.param("dim", int)

    def forward(self, *xs: Tensor) -> Tensor:
        return Tensor(np.stack([x.numpy() for x in xs], axis=self.dim), device=xs[0].device)


@register("Tensor.contiguous", "nn.Identity", "nn.Dropout", "F.dropout", "Tensor.clone")
class Identity(Layer):
    """Pass the input through: no-ops at inference."""

    def forward(self, x: Tensor) -> Tensor:
        return x


@register("pnnx.Attribute")
class Constant(Layer):
    """A constant tensor stored in the weights file."""

    def __init__(self, op):
        super().__init__(op)
        self.value = Tensor(self.weight("data"))

    def forward(self) -> Tensor:
        return self.value
