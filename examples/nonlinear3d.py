"""Learn the 3-D system with every implicit solver from 1467, 369, 94 and 48
observations per trajectory.

    python examples/nonlinear3d.py            # the full study
    python examples/nonlinear3d.py --quick    # a smoke run

Writes `docs/examples/nonlinear3d.md` and `.png` (`nonlinear3d_quick.*` with --quick).
"""

from _study import parse_arguments, study


if __name__ == "__main__":
    arguments = parse_arguments(__doc__)
    study("nonlinear3d", (1467, 369, 94, 48), quick=arguments.quick)
