"""One ``restore <task>`` run: its options checked (``checks.py``), resolved (``plan.py``), executed batch by batch
(``execute.py``, ``batch.py``), resumed (``resume.py``), shared between processes (``distributed.py``), written
(``figures.py``, ``samples.py``) and recorded (``report.py``: metrics.json's environment and summary)."""
