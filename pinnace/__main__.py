"""`python -m pinnace` is `pinnace`."""

from pinnace.cli import main

main()
