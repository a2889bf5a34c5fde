"""``python -m lorasearch.cli``: the same as the ``lorasearch`` command."""

from . import main

main()
