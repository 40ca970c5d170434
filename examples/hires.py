"""Learn the HIRES model (8 species, degree-2 PiNet) from the 20 initial conditions of
Table 7 of Fronk & Petzold, with Radau IIA 5.

    python examples/hires.py            # the full run
    python examples/hires.py --quick    # a smoke run

Writes `docs/examples/hires.md` (`hires_quick.md` with --quick).
"""

from _study import parse_arguments, study


if __name__ == "__main__":
    arguments = parse_arguments(__doc__)
    study("hires", (100,), ("radau5",), quick=arguments.quick)
