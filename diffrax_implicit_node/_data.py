"""Stage 1 of learning: the observations, checked and brought into one shape."""

import dataclasses

import numpy as np
from jaxtyping import ArrayLike, Float


@dataclasses.dataclass(frozen=True)
class Observations:
    """Checked observations: `ts` of shape `(B, T)` and `ys` of shape `(B, T, n)`,
    NumPy arrays (B trajectories of T observations of an n-dimensional state)."""

    ts: Float[np.ndarray, "B T"]
    ys: Float[np.ndarray, "B T n"]

    @property
    def size(self) -> int:
        """The dimension n of the state."""
        return self.ys.shape[-1]


def as_observations(ts: ArrayLike, ys: ArrayLike) -> Observations:
    """Checks the data of [`diffrax_implicit_node.fit`][] (`ts` of shape `(T,)` or
    `(B, T)`, `ys` of shape `(T, n)` or `(B, T, n)`) and returns it batched. Raises
    `ValueError` naming the problem."""
    ts = np.asarray(ts)
    ys = np.asarray(ys)
    for name, array in (("ts", ts), ("ys", ys)):
        if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
            raise ValueError(
                f"`{name}` must be a real numeric array, got {array.dtype}."
            )
        bad = np.argwhere(~np.isfinite(array))
        if len(bad):
            raise ValueError(
                f"`{name}` contains non-finite values (NaN or infinity), the first at "
                f"index {tuple(int(i) for i in bad[0])}."
            )
    if ys.ndim not in (2, 3):
        raise ValueError(
            f"`ys` must have shape (T, n) or (B, T, n), got shape {ys.shape}."
        )
    batched = ys.ndim == 3
    num_times = ys.shape[-2]
    if ts.shape not in ((num_times,), ys.shape[:-1]):
        raise ValueError(
            f"`ts` of shape {ts.shape} does not match `ys` of shape {ys.shape}: "
            f"expected shape ({num_times},)"
            + (f" or {ys.shape[:-1]}." if batched else ".")
        )
    if num_times < 2:
        raise ValueError(
            f"Each trajectory needs at least 2 observations, got {num_times}."
        )
    if not batched:
        ys = ys[None]
    ts = np.broadcast_to(ts, ys.shape[:-1])
    steps = np.diff(ts, axis=1)
    bad = np.argwhere(steps <= 0)
    if len(bad):
        trajectory, time = (int(i) for i in bad[0])
        kind = "repeated" if steps[trajectory, time] == 0 else "decreasing"
        where = f"trajectory {trajectory}, " if batched else ""
        raise ValueError(
            f"`ts` must be strictly increasing, but has {kind} times at {where}"
            f"indices {time} and {time + 1} ({ts[trajectory, time]!r}, "
            f"{ts[trajectory, time + 1]!r})."
        )
    return Observations(ts, ys)
