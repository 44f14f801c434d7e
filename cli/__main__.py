"""`python -m embedcache.cli` runs the `embedcache` command."""

from embedcache.cli import main

main()
