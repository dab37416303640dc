"""`python -m studio`: the same command line as `studio`."""

from studio.cli import main

main()
