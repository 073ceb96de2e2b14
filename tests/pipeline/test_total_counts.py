"""run.json's counts: summed over the shards, unknown (None) rather than under-counted."""

from __future__ import annotations

from virnucpro_trt.pipeline.shard_predictor import COUNT_KEYS, total_counts


def _shard(seed: int) -> dict[str, int]:
    return {key: seed + index for index, key in enumerate(COUNT_KEYS)}


def test_counts_are_summed_over_the_shards() -> None:
    totals = total_counts([_shard(1), _shard(10)])
    assert totals == {key: 11 + 2 * index for index, key in enumerate(COUNT_KEYS)}
    assert total_counts([]) == dict.fromkeys(COUNT_KEYS, 0)  # a run of empty input


def test_a_count_an_older_shard_lacks_is_unknown_not_under_counted() -> None:
    """A resumed run's shard finished by a version before the computed-token counts: those totals are
    None (run.json ``null``), whatever order the shards come in; every other count is still summed."""
    old = {k: v for k, v in _shard(5).items() if not k.endswith("_computed_tokens")}
    for shards in ([_shard(1), old], [old, _shard(1)]):
        totals = total_counts(shards)
        assert totals["dnabert_computed_tokens"] is None and totals["esm_computed_tokens"] is None
        assert totals["frames"] == _shard(1)["frames"] + old["frames"]
        assert totals["esm_tokens"] == _shard(1)["esm_tokens"] + old["esm_tokens"]
