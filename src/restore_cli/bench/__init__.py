"""``restore bench``: suites (``suite.py``), running them (``runner.py``), results, tables and the regression
gate (``results.py``), the papers' published numbers (``papers.py``) and the exact-posterior oracle (``oracle.py``)."""
