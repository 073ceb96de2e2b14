"""Token-budget batching."""

from __future__ import annotations

import numpy as np
import pytest

from virnucpro_trt.runtime.batching import token_budget_batches
from virnucpro_trt.settings import PaddingCap, padding_cap_text, parse_padding_cap


def test_batches_respect_budget_and_cover_everything():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=1000)
    batches = token_budget_batches(lengths, max_batch_tokens=2048)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(1000))
    for batch in batches:
        assert lengths[batch].max() * len(batch) <= 2048
        # longest first: each batch is no longer than the previous one
    longest = [lengths[b].max() for b in batches]
    assert longest == sorted(longest, reverse=True)


def test_oversized_item_gets_its_own_batch_and_max_size_caps():
    batches = token_budget_batches([5000, 10, 10, 10], max_batch_tokens=100, max_batch_size=2)
    assert [b.tolist() for b in batches] == [[0], [1, 2], [3]]


def test_padding_cap_closes_a_batch_where_the_length_falls():
    """A batch stops before an item that would push padding past the cap, unless it is still within
    the floor of computed tokens; without a cap the batches are the budget's alone."""
    lengths = [100, 60, 59, 58]
    assert [b.tolist() for b in token_budget_batches(lengths, 1000)] == [[0, 1, 2, 3]]
    capped = token_budget_batches(lengths, 1000, cap=PaddingCap(0.05))
    assert [b.tolist() for b in capped] == [[0], [1, 2, 3]]  # 60 next to 100 pads 20%; 60/59/58 1.7%
    floored = token_budget_batches(lengths, 1000, cap=PaddingCap(0.05, floor_tokens=250))
    assert [b.tolist() for b in floored] == [[0, 1], [2, 3]]  # 2 x 100 is within the floor, 3 x 100 not


def test_padding_cap_batches_are_maximal_and_within_the_rule():
    rng = np.random.default_rng(1)
    lengths = rng.integers(20, 400, size=700)
    cap = PaddingCap(0.05, floor_tokens=1024)
    plain = token_budget_batches(lengths, 4096, max_batch_size=64)
    batches = token_budget_batches(lengths, 4096, max_batch_size=64, cap=cap)
    assert sorted(np.concatenate(batches).tolist()) == list(range(700))
    order = np.concatenate(batches)
    assert (np.diff(lengths[order]) <= 0).all()  # still longest first, batch after batch

    def within(items: np.ndarray) -> bool:
        computed = len(items) * int(items.max())
        return computed - int(items.sum()) <= cap.max_share * computed or computed <= cap.floor_tokens

    start = 0
    for batch in batches:
        longest = int(lengths[batch].max())
        assert len(batch) * longest <= 4096 and len(batch) <= 64
        assert len(batch) == 1 or within(lengths[batch])
        end = start + len(batch)
        if end < len(order) and (len(batch) + 1) * longest <= 4096 and len(batch) < 64:
            assert not within(lengths[order[start : end + 1]])  # the next item would break the rule
        start = end
    def padded(run: list[np.ndarray]) -> int:
        return sum(len(b) * int(lengths[b].max()) - int(lengths[b].sum()) for b in run)

    assert padded(batches) < padded(plain) and len(batches) > len(plain)


def test_padding_cap_parses_and_refuses_bad_values():
    assert PaddingCap.parse("0.05:8192") == PaddingCap(0.05, 8192)
    assert PaddingCap.parse("0.1") == PaddingCap(0.1, 0)
    assert PaddingCap.parse("5e-2:") == PaddingCap(0.05, 0)  # exponent notation; an empty floor is 0
    for bad in ("x", "1.5", "0.05:-1", "-0.1", "0.05:many"):
        with pytest.raises(ValueError):
            PaddingCap.parse(bad)


@pytest.mark.parametrize(
    "text, message",
    [(" 0.05", "the share ' 0.05' is not a number"), ("inf", "the share 'inf' is not a number"),
     ("nan", "the share 'nan' is not a number"), (":8192", "the share '' is not a number"),
     ("0.0_5", "the share '0.0_5' is not a number"), ("0.05x", "the share '0.05x' is not a number"),
     ("..", "the share '..' is not a number"), ("0.05: 8", "the floor ' 8' is not an integer"),
     ("0.05:+8", "the floor '+8' is not an integer"), ("0.05:8_192", "the floor '8_192' is not an integer"),
     ("0.05:1.5", "the floor '1.5' is not an integer"), ("0.05:" + "9" * 20, "is out of range"),
     ("0.05:-1", "floor must be >= 0 tokens, got -1"), ("1", "share must be in [0, 1), got 1.0")],
)  # fmt: skip
def test_padding_cap_takes_only_what_the_cxx_host_takes(text: str, message: str) -> None:
    """Python's ``--max-padding`` grammar is ``virnucpro-host``'s: spellings ``float()``/``int()`` would
    take (spaces, inf, nan, underscores, a plus on the floor) are refused in one line, as the host
    refuses them (tests/host_runtime/test_cpp_batching.py runs the same texts through the host)."""
    with pytest.raises(ValueError) as info:
        PaddingCap.parse(text)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_option_text_reads_back_as_the_same_cap():
    """``--max-padding``'s text, as passed on to another run or to ``virnucpro-host``: the same double."""
    for cap in (PaddingCap(0.29, 64), PaddingCap(0.1), PaddingCap(1 / 3, 8192)):
        assert parse_padding_cap(padding_cap_text(cap)) == cap
    assert parse_padding_cap("NONE") is None and padding_cap_text(None) == "none"
    with pytest.raises(ValueError, match="padding cap"):  # as the C++ host: no spaces around it
        parse_padding_cap(" none")
    with pytest.raises(ValueError, match="padding cap"):
        parse_padding_cap("0.05:eight")
