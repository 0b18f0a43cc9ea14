"""`python -m sketchsearch.cli ...` (what torchrun launches): the `sketchsearch` command."""

from . import main

main()
