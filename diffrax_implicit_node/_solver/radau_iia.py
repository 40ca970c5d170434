import math

import mpmath
import numpy as np


def radau_iia_coefficients(stages: int) -> tuple[np.ndarray, np.ndarray]:
    """The nodes `c` and matrix `a` of the Radau IIA method with `stages` stages,
    computed in 50-digit arithmetic and rounded to float64.

    The nodes are the zeros of `dˢ⁻¹/dxˢ⁻¹ (xˢ⁻¹ (x - 1)ˢ)` (Hairer & Wanner IV.5),
    the last of which is 1; `a` integrates the Lagrange basis on them,
    `aᵢⱼ = ∫₀^cᵢ Lⱼ`, i.e. satisfies `Σⱼ aᵢⱼ cⱼᵏ⁻¹ = cᵢᵏ / k` for `k = 1, ..., s`.
    """
    s = stages
    with mpmath.workdps(50):
        # The (s - 1)-th derivative of Σₖ C(s, k) (-1)^(s-k) x^(s-1+k), exactly.
        coefficients = [
            math.comb(s, k)
            * (-1) ** (s - k)
            * math.factorial(s - 1 + k)
            // math.factorial(k)
            for k in range(s + 1)
        ]
        roots = mpmath.polyroots(coefficients[::-1], maxsteps=200, extraprec=200)
        nodes = sorted(mpmath.re(root) for root in roots)
        nodes[-1] = mpmath.mpf(1)
        powers = mpmath.matrix([[node**k for k in range(s)] for node in nodes])
        integrals = mpmath.matrix(
            [[node ** (k + 1) / (k + 1) for k in range(s)] for node in nodes]
        )
        a = integrals * powers**-1
        return (
            np.array([float(node) for node in nodes]),
            np.array([[float(a[i, j]) for j in range(s)] for i in range(s)]),
        )
