import numpy as np
import pytest
import torch
from scipy import stats

from lmsrr.buffer import ReservoirBuffer


def sequential_reservoir(capacity, items, u):
    """Vitter's algorithm R one sample at a time, consuming the same uniforms u."""
    store = [None] * capacity
    for j, (item, uj) in enumerate(zip(items, u)):
        if j < capacity:
            store[j] = item
        else:
            r = int(np.floor(uj * (j + 1)))
            if r < capacity:
                store[r] = item
    return store


def test_batched_writes_equal_the_sequential_algorithm():
    cap, n, bs = 13, 200, 17  # batches straddle the fill point and draw duplicate slots
    gen = torch.Generator().manual_seed(3)
    buf = ReservoirBuffer(cap, (1,), 1, generator=gen)
    replay = torch.Generator().manual_seed(3)
    u = []
    for s in range(0, n, bs):
        m = min(bs, n - s)
        u.append(torch.rand(m, dtype=torch.float64, generator=replay))
        buf.add(torch.arange(s, s + m)[:, None], torch.arange(s, s + m))
    expect = sequential_reservoir(cap, list(range(n)), torch.cat(u).tolist())
    assert buf.y[:cap].tolist() == expect


def test_every_stream_sample_has_equal_inclusion_probability():
    cap, n, bs, trials = 20, 100, 7, 3000
    gen = torch.Generator().manual_seed(0)
    counts = np.zeros(n)
    for _ in range(trials):
        buf = ReservoirBuffer(cap, (1,), 1, generator=gen)
        for s in range(0, n, bs):
            m = min(bs, n - s)
            buf.add(torch.zeros(m, 1), torch.arange(s, s + m))
        stored = buf.y[:cap]
        assert len(buf) == cap and stored.unique().numel() == cap  # capacity respected, no repeats
        counts[stored.numpy()] += 1
    # Each sample is kept with probability cap / n; chi-square against the uniform expectation.
    expected = trials * cap / n
    assert abs(counts.mean() - expected) < 1e-9
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert stats.chi2.sf(chi2, df=n - 1) > 0.001, chi2
    # ... and not trivially: early and late halves are kept equally often.
    assert abs(counts[:50].mean() - counts[50:].mean()) < 0.05 * expected


def test_fill_sample_and_stored_fields():
    buf = ReservoirBuffer(8, (1, 2, 2), 3)
    assert buf.is_empty() and len(buf) == 0
    with pytest.raises(RuntimeError):
        buf.sample(2)
    x = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 1, 2, 2)
    logits = torch.randn(5, 3)
    buf.add(x, torch.arange(5), logits, task=1)
    assert len(buf) == 5 and buf.seen == 5
    torch.testing.assert_close(buf.logits[:5], logits)
    assert buf.task[:5].tolist() == [1] * 5
    bx, by, bz, bt = buf.sample(10)  # asks for more than stored: all of them, without repeats
    assert sorted(by.tolist()) == list(range(5))
    torch.testing.assert_close(bz, logits[by])
    assert torch.equal(bx[:, 0, 0, 0], by.to(torch.uint8))
