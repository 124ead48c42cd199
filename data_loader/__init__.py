"""Datasets and loaders. A new data set: a module here with a BaseDataLoader
subclass decorated with `@DATA_LOADERS.register("Name")`, imported below."""
from data_loader import (arrays, dots, images, mnist, pinwheel, sequences, strokes, switching_dots,  # noqa: F401
                         synthetic)  # (registers the loaders)
from data_loader.registry import DATA_LOADERS

__all__ = ["DATA_LOADERS"]
