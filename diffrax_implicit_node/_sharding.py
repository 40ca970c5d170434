"""Data-parallel training: the windows are split across devices along one axis and
the parameters are replicated. XLA's SPMD partitioner reduces the loss and its
gradient across devices; the least-squares solve reduces small triangular factors
(TSQR) instead of gathering the Jacobian onto every device."""

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy as jsp
import lineax as lx
import numpy as np
import optimistix as optx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Int, PyTree


Devices = int | Sequence[jax.Device] | Mesh


def device_mesh(devices: Devices) -> Mesh:
    """The mesh to train on: `devices` itself if it is a `Mesh`; else a
    one-dimensional mesh of the given devices, or of the first `devices` visible
    ones. Raises `ValueError` if there are not that many."""
    if isinstance(devices, Mesh):
        return devices
    if isinstance(devices, bool) or not isinstance(devices, int | Sequence):
        raise ValueError(
            f"`devices` must be a number, a sequence of devices or a "
            f"`jax.sharding.Mesh`, got {devices!r}."
        )
    if isinstance(devices, int):
        available = jax.devices()
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"asked for {devices} devices, but {len(available)} "
                f"{available[0].platform.upper()} device(s) are visible."
            )
        devices = available[:devices]
    if len(devices) == 0:
        raise ValueError("`devices` is empty.")
    return Mesh(np.asarray(devices), (DataParallel.axis,))


def _padded(x: Array, extra: int) -> Array:
    # Copies of the first window: their solves succeed whenever a real one does.
    return jnp.concatenate([x, jnp.repeat(x[:1], extra, axis=0)])


def _place(x: Any, sharding: NamedSharding) -> Array:
    """`jax.device_put`; on several hosts, where that cannot reach other hosts'
    devices, a host value (the same on every host) or a global array is laid out
    by other means."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.jit(lambda y: y, out_shardings=sharding)(x)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _to_host(x: Array) -> np.ndarray:
    """A NumPy copy of a whole array, gathered from other hosts if need be."""
    if jax.process_count() > 1 and not x.is_fully_addressable:
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


class _TallSkinnyQR(lx.AbstractLinearSolver):
    """Least squares `min |A x - b|` for an operator whose first output is split by
    rows across the devices of `mesh` (the residuals of the windows) and whose other
    outputs, if any, are small and replicated (Levenberg--Marquardt's damping rows).

    Each device factorises its rows of `[A | b]` (QR, keeping only R); the stacked
    triangles, of a size independent of the number of windows, are factorised
    again with the other rows. The last triangle is that of `[A | b]` itself, so the
    solution is that of a QR least-squares solve on one device, while no device ever
    holds more than its own rows of the Jacobian. (Reducing J^T J instead would square
    the condition number, which for stiff problems is already large.)

    ??? cite "Reference"

        ```bibtex
        @article{demmel2012communication,
            title={Communication-optimal Parallel and Sequential {QR} and {LU}
                   Factorizations},
            author={Demmel, James and Grigori, Laura and Hoemmen, Mark and
                    Langou, Julien},
            journal={SIAM Journal on Scientific Computing},
            volume={34},
            number={1},
            pages={A206--A239},
            year={2012}
        }
        ```
    """

    mesh: Mesh = eqx.field(static=True)

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        del options
        return operator

    def compute(
        self,
        state: lx.AbstractLinearOperator,
        vector: PyTree[Array],
        options: dict[str, Any],
    ) -> tuple[Array, lx.RESULTS, dict[str, Any]]:
        del options
        operator = state
        (size,) = operator.in_structure().shape  # The flattened parameters.
        dtype = operator.in_structure().dtype
        columns = jax.vmap(operator.mv, out_axes=-1)(jnp.eye(size, dtype=dtype))
        rows = [
            jnp.concatenate([a.reshape(-1, size), b.reshape(-1, 1)], axis=1)
            for a, b in zip(jax.tree.leaves(columns), jax.tree.leaves(vector))
        ]
        spec = PartitionSpec(self.mesh.axis_names)
        local_triangles = jax.shard_map(
            lambda block: jnp.linalg.qr(block, mode="r"),
            mesh=self.mesh,
            in_specs=spec,
            out_specs=spec,
        )(rows[0])
        triangle = jnp.linalg.qr(
            jnp.concatenate([local_triangles, *rows[1:]]), mode="r"
        )
        # The last column of R holds Q^T b; singular R gives non-finite values, which
        # `lineax.linear_solve` reports as a singular operator.
        solution = jsp.linalg.solve_triangular(
            triangle[:size, :size], triangle[:size, size], lower=False
        )
        return solution, lx.RESULTS.successful, {}

    def transpose(self, state, options):
        raise NotImplementedError("Only least-squares solves are data parallel.")

    def conj(self, state, options):
        raise NotImplementedError("Only least-squares solves are data parallel.")

    def assume_full_rank(self) -> bool:
        return True


class DataParallel(eqx.Module):
    """How the windows of `fit` are laid out on a mesh of devices: padded to a
    multiple of the device count with copies of the first window, of weight 0, and
    sharded along the window axis; everything else is replicated."""

    mesh: Mesh = eqx.field(static=True)
    num_windows: int = eqx.field(static=True)
    num_padded: int = eqx.field(static=True)

    axis: ClassVar[str] = "windows"

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    @property
    def windows_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(self.mesh.axis_names))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def shard_windows(self, windows: PyTree) -> PyTree:
        """Pads the windows (a record of arrays with a leading window axis and a
        `weight` field) and places them on the mesh. On several hosts, `windows` are
        this process's own; the global windows are their concatenation."""
        padded = jax.tree.map(self.shard_per_window, windows)
        extra = self.num_padded - self.num_windows
        weight = jnp.concatenate(
            [windows.weight, jnp.zeros(extra, dtype=windows.weight.dtype)]
        )
        return eqx.tree_at(lambda w: w.weight, padded, self.shard_per_window(weight))

    def shard_per_window(self, x: Array) -> Array:
        """Pads an array of one entry per window (such as their numbers of steps)
        with copies of the first window's, and splits it across the devices."""
        if len(x) < self.num_padded:
            x = _padded(jnp.asarray(x), self.num_padded - self.num_windows)
        if jax.process_count() == 1:
            return jax.device_put(x, self.windows_sharding)
        return jax.make_array_from_process_local_data(
            self.windows_sharding, np.asarray(x)
        )

    def real_windows(self, x: Array) -> np.ndarray:
        """A host copy of an array of one entry per window, without the padding."""
        return _to_host(x)[: self.num_windows]

    def without_padding(self, residuals: PyTree) -> PyTree:
        """`residuals` (with a field `windows`) of the real windows only, for
        statistics over them."""
        if self.num_padded == self.num_windows:
            return residuals
        cut = jax.tree.map(lambda x: x[: self.num_windows], residuals.windows)
        return eqx.tree_at(lambda r: r.windows, residuals, cut)

    def replicate(self, tree: PyTree) -> PyTree:
        """Places every array of `tree` on every device."""
        arrays, rest = eqx.partition(tree, eqx.is_array)
        arrays = jax.tree.map(lambda x: _place(x, self.replicated), arrays)
        return eqx.combine(arrays, rest)

    def lay_out_state(self, opt_state: PyTree, size: int) -> PyTree:
        """Places an optimiser's state as its step leaves it: arrays with a leading
        axis of one row per residual (a least-squares state's residuals and
        Jacobian, `size` rows per window) split along it, the rest replicated.
        (Initial states come out of `init` replicated, which would hold the whole
        Jacobian on every device and compile the step a second time.)"""
        rows = self.num_padded * jax.process_count() * size

        def place(x):
            if not eqx.is_array(x):
                return x
            split = x.ndim > 0 and x.shape[0] == rows
            return _place(x, self.windows_sharding if split else self.replicated)

        return jax.tree.map(place, opt_state)

    def shard_batch(self, indices: Int[Array, " b"]) -> Int[Array, " c"]:
        """Pads a minibatch of window indices to a multiple of the device count with
        the index of a padding window (weight 0), and shards it."""
        extra = -len(indices) % self.num_devices
        indices = jnp.concatenate(
            [indices, jnp.full(extra, self.num_padded - 1, dtype=indices.dtype)]
        )
        return _place(indices, self.windows_sharding)

    def with_sharded_solve(
        self, optimiser: optx.AbstractGaussNewton
    ) -> optx.AbstractGaussNewton:
        """The optimiser with its default QR solve replaced by the one that keeps
        the Jacobian's rows on their devices. Another linear solver is kept (and
        gathers the Jacobian)."""
        solver = getattr(optimiser.descent, "linear_solver", None)
        if not isinstance(solver, lx.QR | lx.AutoLinearSolver):
            return optimiser
        return eqx.tree_at(
            lambda o: o.descent.linear_solver, optimiser, _TallSkinnyQR(self.mesh)
        )

    def unpadded(
        self,
        init: Callable[[PyTree, PyTree], PyTree],
        trainable: PyTree,
        residuals: PyTree,
    ) -> tuple[PyTree, PyTree]:
        """Host arrays (zeros) of the shapes that `(trainable, init(trainable,
        residuals))` have without the padding of `residuals.windows`: only a
        least-squares state, which holds the residuals and their Jacobian, differs."""
        residuals = self.without_padding(residuals)
        shapes = eqx.filter_eval_shape(lambda t: (t, init(t, residuals)), trainable)
        return jax.tree.map(
            lambda x: (
                np.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x
            ),
            shapes,
        )

    def to_host(self, tree: PyTree, unpadded: PyTree) -> PyTree:
        """NumPy copies of the arrays of `tree`, the padding left out, for a
        checkpoint that any number of devices can resume: `unpadded` is `tree` as it
        would be without padding (its arrays' shapes, and its structure, which may
        record shapes too)."""

        def cut(x, like):
            if not eqx.is_array(x):
                return x
            return _to_host(x)[tuple(slice(0, n) for n in like.shape)]

        leaves, structure = jax.tree.flatten(unpadded)
        return jax.tree.unflatten(structure, map(cut, jax.tree.leaves(tree), leaves))

    def from_host(self, tree: PyTree, like: PyTree) -> PyTree:
        """The inverse of `to_host`: pads each array of `tree` with zeros to the
        shape of the same array of `like` (padded residuals and their derivatives
        are exactly zero) and places it as that one is placed."""

        def pad(x, like):
            if not eqx.is_array(like):
                return like
            if np.shape(x) != like.shape:
                x = np.pad(x, [(0, n - m) for m, n in zip(np.shape(x), like.shape)])
            return _place(x, like.sharding)

        leaves, structure = jax.tree.flatten(like)
        return jax.tree.unflatten(structure, map(pad, jax.tree.leaves(tree), leaves))


def data_parallel(
    devices: Devices | None, num_windows: int, batch_size: int | None
) -> DataParallel:
    """The layout of `num_windows` windows on `devices` (default: one): padded to
    a multiple of the device count, with at least one padding window if minibatches
    of `batch_size` need one to fill up to that multiple. On several hosts, the
    counts are this process's own and its devices', and there is no padding."""
    mesh = device_mesh(1 if devices is None else devices)
    count = len(mesh.local_devices)
    minibatches = batch_size is not None and batch_size != num_windows
    needed = num_windows + int(minibatches and batch_size % count != 0)
    if jax.process_count() > 1 and (minibatches or num_windows % count != 0):
        # Padding would lie among the windows (statistics and checkpoints drop it
        # from the end).
        raise ValueError(
            f"On several hosts, each host's windows must divide evenly among its "
            f"{count} devices (this host has {num_windows}), without minibatches."
        )
    return DataParallel(mesh, num_windows, count * math.ceil(needed / count))
