"""``restore bench``: suites (``suite.py``), running them (``runner.py``), reading, merging and gating results
(``results.py``), published numbers and verdicts (``papers.py``), the report and its figures (``report.py``,
``plots.py``, ``bars.py``), throughput (``throughput.py``) and the exact-posterior oracle (``oracle.py``)."""
