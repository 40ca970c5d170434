"""Saving and resuming the state of training."""

import json
import os
import pathlib
from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int, PyTree


_CHECKPOINT_FORMAT = 2


class Checkpoint(NamedTuple):
    trainable: PyTree
    opt_state: PyTree
    # Every epoch's loss, across the rounds of automatic discretisation.
    losses: list[float]
    # The steps of each window in the current round of automatic discretisation.
    steps: Int[Array, " m"]


def save_checkpoint(path: pathlib.Path, checkpoint: Checkpoint) -> None:
    header = dict(
        format=_CHECKPOINT_FORMAT,
        epochs=len(checkpoint.losses),
        steps=np.asarray(checkpoint.steps).tolist(),
    )
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        f.write((json.dumps(header) + "\n").encode())
        eqx.tree_serialise_leaves(
            f,
            (checkpoint.trainable, checkpoint.opt_state, np.asarray(checkpoint.losses)),
        )
    # Atomic: an interrupted save leaves the previous checkpoint intact.
    os.replace(partial, path)


def load_checkpoint(
    path: pathlib.Path, trainable: PyTree, opt_state: PyTree, num_windows: int
) -> Checkpoint:
    """Reads a checkpoint saved from parameters and an optimiser state of the same
    structure as `trainable` and `opt_state`."""
    with open(path, "rb") as f:
        try:
            header = json.loads(f.readline())
            if header.get("format") != _CHECKPOINT_FORMAT:
                raise ValueError
            steps = jnp.asarray(header["steps"])
            if steps.shape != (num_windows,):
                raise ValueError
            like = (trainable, opt_state, np.zeros(header["epochs"]))
            trainable, opt_state, losses = eqx.tree_deserialise_leaves(f, like)
        except Exception as e:
            raise ValueError(
                f"Cannot resume from checkpoint {str(path)!r}: it is not a checkpoint "
                "of this model and optimiser (delete it to start afresh)."
            ) from e
    return Checkpoint(
        trainable,
        opt_state,
        [float(x) for x in losses],
        steps,
    )
