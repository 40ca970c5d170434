import inspect
import re

import diffrax

from ._solver import AbstractCollocationSolver, AdaptiveRadau


_BIBTEX = re.compile(r"```bibtex([^`]*)```")


def _collocation_solver(solver):
    """Makes `diffrax.citation(solver=...)` print the references in the `??? cite`
    block of a solver of this package, as it does for Diffrax's own solvers."""
    if not isinstance(solver, (AbstractCollocationSolver, AdaptiveRadau)):
        return None
    solver_cls = type(solver)
    references = [
        inspect.cleandoc(reference)
        for reference in _BIBTEX.findall(solver_cls.__doc__ or "")
    ]
    if not references:
        return None
    return (
        f"% You are using the {solver_cls.__name__} solver of diffrax-implicit-node, "
        "whose method and\n% implementation are described in:\n"
        + "\n\n".join(references)
    )


# Diffrax's public registry of citation rules.
diffrax.citation_rules.append(_collocation_solver)
