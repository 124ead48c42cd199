"""The architecture registry: config `arch.type` -> class.

The framework injects what the data loader knows into the classes that take it: `data_shape` (the shape of
one example), `num_train` (the size of the training split, N in the SVAE objectives), `frames_per_example`
(mean real frames per training sequence), `label_names` (the names of the labels, None without labels), and for
sequences `channel_names`, `sequence_names` and `frame_rate` (frames per second; None when unknown)."""
from utils.registry import Registry

ARCHITECTURES = Registry("architecture", injected=("data_shape", "num_train", "frames_per_example", "label_names",
                                                          "channel_names", "sequence_names", "frame_rate"))
