"""Image files: which files are images and the size limit (``files.py``), reading any PNG/JPEG/TIFF/... into a
``[C, H, W]`` tensor and fitting it to a model (``read.py``), and atomic writing of PNG, npy and JSON (``write.py``)."""
