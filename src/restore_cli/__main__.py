"""``python -m restore_cli``: the ``restore`` command (and ``accelerate launch -m restore_cli ...``)."""

from .cli import main

main()
