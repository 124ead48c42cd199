"""The architecture registry: config `arch.type` -> class. `data_shape` is injected by the framework."""
from utils.registry import Registry

ARCHITECTURES = Registry("architecture", injected=("data_shape",))
