"""`python -m edgecls ...` is the `edgecls` command."""

from edgecls.cli import main

main(prog_name="edgecls")
