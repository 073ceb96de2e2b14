"""Compiled engines: build time (export, compile, parity gate, manifest) and their runners.

One module per backend (``onnxruntime_backend``, ``inductor_backend``, ``tensorrt_backend``), each
exposing an :class:`~virnucpro_trt.engines.spec.EngineBackend`; ``registry`` is the one place they are
listed. Heavy optional libraries (onnxruntime, tensorrt) are imported lazily inside those modules.
"""
