import numpy as np
from jaxtyping import Array


# A real scalar time, as Diffrax's solvers and interpolations receive it.
RealScalarLike = int | float | Array | np.ndarray
