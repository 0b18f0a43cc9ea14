"""`python -m sketchsearch ...`: the `sketchsearch` command."""

from .cli import main

main()
