"""Train on van der Pol with mu = 1000 with the explicit RK4 and with the implicit
solvers, and report how far each gets: RK4 is unstable at the spacing of the data.

    python examples/vanderpol.py            # the full run
    python examples/vanderpol.py --quick    # a smoke run

Writes `docs/examples/vanderpol.md` (`vanderpol_quick.md` with --quick).
"""

from _study import IMPLICIT_SOLVERS, parse_arguments, study


if __name__ == "__main__":
    arguments = parse_arguments(__doc__)
    study("vanderpol", (300,), ("rk4",) + IMPLICIT_SOLVERS, quick=arguments.quick)
