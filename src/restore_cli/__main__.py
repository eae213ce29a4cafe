"""``python -m restore_cli``: the ``restore`` command (and ``accelerate launch -m restore_cli ...``)."""

from .cli.app import main

main()
