"""What restore knows by name and how it gets a model: tasks and methods (``catalog.py``, ``registry.py``), the
models file (``config.py``), Hub download, cache and loading (``hub.py``), and random-weight stand-ins (``testing.py``)."""
