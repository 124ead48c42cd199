"""Datasets and loaders. A new data set: a module here with a BaseDataLoader
subclass decorated with `@DATA_LOADERS.register("Name")`, imported below."""
from data_loader import dots, mnist, pinwheel, strokes, switching_dots, synthetic  # noqa: F401  (registers the loaders)
from data_loader.registry import DATA_LOADERS

__all__ = ["DATA_LOADERS"]
