"""Models: cards and registry, ONNX runtime sessions, pre/post-processing, export, metrics.

numpy in, numpy out: nothing here touches the database, Celery or highdicom.
"""
