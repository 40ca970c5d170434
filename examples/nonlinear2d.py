"""Learn Kaps' problem with every implicit solver from 1467, 369, 94 and 48
observations per trajectory.

    python examples/nonlinear2d.py            # the full study
    python examples/nonlinear2d.py --quick    # a smoke run

Writes `docs/examples/nonlinear2d.md` and `.png` (`nonlinear2d_quick.*` with --quick).
"""

from _study import parse_arguments, study


if __name__ == "__main__":
    arguments = parse_arguments(__doc__)
    study("nonlinear2d", (1467, 369, 94, 48), quick=arguments.quick)
