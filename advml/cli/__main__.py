"""`python -m advml.cli`."""

from advml.cli import main

main()
