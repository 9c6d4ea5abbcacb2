"""CVAT serverless function (nuclio): ``function.yaml`` and the handler ``main.py`` (README: CVAT)."""
