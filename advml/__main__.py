"""`python -m advml ...` runs the CLI (where the `advml` script is not installed)."""

from advml.cli import main

main()
