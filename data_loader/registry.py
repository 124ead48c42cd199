"""The data loader registry: config `data_loader.type` -> class."""
from utils.registry import Registry

DATA_LOADERS = Registry("data loader")
