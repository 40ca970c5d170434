import numpy as np
from jaxtyping import Array, PyTree, Shaped


# A real scalar time, as Diffrax's solvers and interpolations receive it.
RealScalarLike = int | float | Array | np.ndarray
# A state: a PyTree of arrays, its structure named "Y" so that an annotation
# `PyTree[..., "Y"]` can ask for another PyTree of the same structure.
Y = PyTree[Shaped[Array, " ?*y"], "Y"]
