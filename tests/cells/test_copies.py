"""`kernels.copies`: many strided copies in one launch (Triton's interpreter) give torch's, one by
one: strided and transposed views, broadcast sources, masked rows, added copies."""

import pytest
import torch

from cellsearch.engine.kernels.copies import Copies


@pytest.fixture(autouse=True)
def interpreted(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_launch_of_copies_gives_torchs(dtype):
    generator = torch.Generator().manual_seed(0)

    def random(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    source, row, big = random(3, 5, 7), random(1, 1, 7), random(2, 3, 2, 5, 1100)
    reset = torch.tensor([True, False, True, False, False]).view(1, 5, 1)
    results = []
    for in_torch in (True, False):
        slots = torch.linspace(-1, 1, 2 * 4 * 5 * 9, dtype=dtype).view(2, 4, 5, 9)
        wide = torch.zeros(2, 3, 2, 5, 1100, dtype=dtype)
        copies = Copies()
        copies.add(slots[0, 1:, :, :7], source)  # a corner
        copies.add(slots[1, :3, :, 2:], row, zero_where=reset)  # broadcast, rows zeroed
        copies.add(slots[1, 3].t()[:7], source[0].t(), add=True)  # transposed, added
        copies.add(wide.permute(4, 3, 2, 1, 0), big.permute(4, 3, 2, 1, 0))  # five dims, blocks
        copies.launch(in_torch=in_torch)
        results.append((slots, wide))
    (slots, wide), (launched_slots, launched_wide) = results
    assert torch.equal(slots, launched_slots) and torch.equal(wide, launched_wide)
    assert torch.equal(wide, big) and (slots[1, 0, 0, 2:] == 0).all()


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integers_and_flags_are_copied_as_they_are(dtype):
    source = torch.arange(-60, 60).view(4, 30) % 7 - 3  # (negatives, and more than a byte)
    source = (source * 10**12 if dtype == torch.int64 else source > 0).to(dtype)
    buffer = torch.zeros(2, 30, 4, dtype=dtype)
    copies = Copies()
    copies.add(buffer[1].t(), source)
    copies.add(buffer[0, :, :2], source[:2].t())
    copies.launch()
    assert torch.equal(buffer[1].t(), source) and torch.equal(buffer[0, :, :2], source[:2].t())
    assert not buffer[0, :, 2:].any()


def test_what_the_kernel_cannot_copy_is_refused():
    copies = Copies()
    with pytest.raises(ValueError, match="at most 5 dimensions"):
        copies.add(torch.zeros(1, 1, 1, 1, 1, 1), torch.zeros(1))
    copies.add(torch.zeros(3), torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="one of torch.float32, .* a launch"):
        copies.launch()
    copies = Copies()
    copies.add(torch.zeros(3, dtype=torch.int64), torch.ones(3, dtype=torch.int64), add=True)
    with pytest.raises(ValueError, match="for floats, not torch.int64"):
        copies.launch()


def test_the_kernel_is_usable_where_it_copies_as_torch_does_and_says_why_where_not(monkeypatch):
    from cellsearch.engine.kernels import copies

    copies.usable.cache_clear()
    try:
        assert copies.usable("cpu")
        copies.usable.cache_clear()
        monkeypatch.setattr(copies, "SOURCE", copies.SOURCE.replace(
            "destination += position * tl.load(at + 1)", "destination += position"))
        with pytest.warns(RuntimeWarning, match="not usable on cpu .*disagrees with torch"):
            assert not copies.usable("cpu")
    finally:
        copies.usable.cache_clear()
