"""Exponential-family distributions in natural parameters (batched, meant for float64).

One module per family, each with its log normaliser A(eta), expected sufficient
statistics E[t] (= grad A), KL between two members and the standard <-> natural
converters. `psd` holds the one positive-definite Cholesky/solve helper they share.
Leading dimensions are batch dimensions everywhere.
"""
