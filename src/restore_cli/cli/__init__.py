"""The command line: the Typer app and its option panels (``app.py``) and what a person reads in a
terminal or a log (``console.py``).  Nothing below imports from here."""
