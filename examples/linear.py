"""Learn y' = -1000 y + 3000 - 2000 exp(-t) (the forcing known) with every
implicit solver from 1467, 369, 94 and 48 observations.

    python examples/linear.py            # the full study
    python examples/linear.py --quick    # a smoke run

Writes `docs/examples/linear.md` and `.png` (`linear_quick.*` with --quick).
"""

from _study import parse_arguments, study


if __name__ == "__main__":
    arguments = parse_arguments(__doc__)
    # The paper's design: one solver step per gap, whose bias at small N (the
    # transient inside the first gap) is what the study shows; `reproduce linear`
    # chooses the steps itself.
    study("linear", (1467, 369, 94, 48), quick=arguments.quick, steps=1)
