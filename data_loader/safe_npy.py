"""Read user .npy files without letting them run code.

`np.load(path, allow_pickle=True)` unpickles object arrays with Python's full unpickler, so a file
can name any callable (`os.system`, ...) and have it called while loading. Here an object array is
read through an unpickler that resolves only numpy's own array reconstruction (ndarray, dtype, their
reconstruct helpers, and the bytes helper of old pickle protocols) and refuses every other global;
numeric arrays never touch pickle.
"""
from __future__ import annotations

import codecs
import importlib
import pickle
from pathlib import Path

import numpy as np

_CORE = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"  # numpy 2 renamed it
# (module, name) as numpy 1.x, numpy 2.x and Python 2 pickles spell them -> the object they may name.
# Pickle protocols 0-2 spell bytes as _codecs.encode(text, "latin1").
_ALLOWED = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode}
for _submodule, _names in (("multiarray", ("_reconstruct", "scalar")), ("numeric", ("_frombuffer",))):
    _module = importlib.import_module(f"{_CORE}.{_submodule}")
    for _name in _names:
        for _core in ("numpy.core", "numpy._core"):
            _ALLOWED[(f"{_core}.{_submodule}", _name)] = getattr(_module, _name)


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside numpy's array reconstruction."""


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"it asks to load {module}.{name}, which is not part of a numpy array") from None


def load_npy(path: str | Path) -> np.ndarray:
    """The array in a .npy file; an object array is unpickled admitting numpy arrays, dtypes and
    builtin containers and numbers only. Raises UnsafePickleError for anything else, and
    ValueError/OSError/pickle.UnpicklingError for a malformed file."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f".npy format version {version} is not supported; re-save the array with np.save")
        if not dtype.hasobject:
            f.seek(0)
            return np.load(f, allow_pickle=False)
        array = _ArrayOnlyUnpickler(f, encoding="latin1").load()
    if not isinstance(array, np.ndarray) or array.shape != shape:
        raise ValueError(f"the pickled payload is not the {shape} object array the header describes")
    return array
