"""``python -m sdetool`` (and ``torchrun -m sdetool``) runs the command-line interface."""

from sdetool.cli import main

if __name__ == "__main__":
    main()
