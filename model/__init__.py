"""Architectures, shared networks, likelihoods and metrics.

A new architecture: a module (or package) here with a BaseModel subclass
decorated with `@ARCHITECTURES.register("Name")`, imported below.
"""
from model import vae  # noqa: F401  (registers the architectures)
from model.graph import graph_vae, recurrent  # noqa: F401
from model.svae import gmm, hidden_markov, lds, slds  # noqa: F401
from model.registry import ARCHITECTURES

__all__ = ["ARCHITECTURES"]
