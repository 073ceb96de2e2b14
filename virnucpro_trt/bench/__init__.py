"""``virnucpro-trt bench``: one workload, every configuration side by side against the upstream way.

The modules follow a run: :mod:`.workload` (the reads and their kept frames), :mod:`.models` (the
checkpoints, named or random), :mod:`.configs` (which configurations exist and how each one is opened;
engine builds go through :mod:`.build_worker` in a child process), :mod:`.path` (the timed classification
path), :mod:`.timing`, :mod:`.parity`, :mod:`.runner` (the loop), :mod:`.gate`, :mod:`.report` (the JSON
document), :mod:`.table` and :mod:`.plot`. :mod:`.hardware` records the machine. The measurement scripts
in ``benchmarks/`` reuse the same pieces.
"""
