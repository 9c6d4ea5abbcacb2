"""The data the models learn from and are measured on: one record type (:class:`Instance`), validation shared
by the readers, the crop, the grid sequences, augmentation and the training dataset. The annotation formats
(readers and writers) are :mod:`polyrnn.formats`."""

from __future__ import annotations

from polyrnn.data.instance import DataError, Dataset, Instance, Skip, load_image

__all__ = ["DataError", "Dataset", "Instance", "Skip", "load_image"]
