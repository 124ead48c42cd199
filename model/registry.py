"""The architecture registry: config `arch.type` -> class.

The framework injects `data_shape` (the shape of one example) and `num_train` (the size of
the training split, N in the SVAE objectives) into the classes that take them."""
from utils.registry import Registry

ARCHITECTURES = Registry("architecture", injected=("data_shape", "num_train"))
