"""polyrnn: Polygon-RNN (Castrejón, Kundu, Urtasun, Fidler, CVPR 2017) for annotating objects with
polygons."""

from polyrnn.data import Dataset, Instance
from polyrnn.data.crop import CropBox
from polyrnn.formats import load_dataset

__version__ = "0.1.0"

__all__ = ["CropBox", "Dataset", "Instance", "__version__", "load_dataset"]
