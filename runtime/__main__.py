"""`python -m runtime` is `pinnace-oci`."""

from runtime.cli import main

main()
