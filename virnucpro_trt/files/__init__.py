"""File primitives every layer shares: digests, stamps, atomic writes and checked names.

This is the bottom of the import graph (it imports only :mod:`virnucpro_trt.errors`), so ``models``,
``runtime``, ``engines`` and ``outputs`` all hash, stamp and write files the same way.
"""
