"""Log-mel augmentation: shapes kept, labels kept (or mixed, with the mixture returned), off at probability 0,
reproducible from (seed, epoch, batch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lcasc import augment as A
from tests.conftest import synthetic_logmel


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    X, _ = synthetic_logmel(32, seed=3)
    return torch.from_numpy(X).unsqueeze(1)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("fn", [
    lambda x, p: A.freq_mixstyle(x, rng(), p, 0.3),
    lambda x, p: A.mixup(x, rng(), p, 0.3)[0],
    lambda x, p: A.freq_mask(x, rng(), p, 8),
    lambda x, p: A.time_mask(x, rng(), p, 10),
    lambda x, p: A.time_roll(x, rng(), p, 10),
], ids=["mixstyle", "mixup", "freq_mask", "time_mask", "roll"])
def test_each_augmentation_keeps_the_shape_changes_the_batch_and_is_a_no_op_at_probability_0(fn, batch):
    out = fn(batch, 1.0)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert not torch.equal(out, batch)
    assert fn(batch, 0.0) is batch


def test_an_inactive_config_returns_the_batch_itself_and_no_mixture(batch):
    x, mix = A.apply(batch, A.AugmentConfig(), rng())
    assert x is batch and mix is None
    assert not A.AugmentConfig().active and A.recipe_defaults("kd").active


def test_mixup_returns_the_mixture_the_loss_needs(batch):
    out, mix = A.mixup(batch, rng(1), 1.0, 0.3)
    assert mix.perm.shape == (32,) and sorted(mix.perm.tolist()) == list(range(32))
    assert ((mix.weight >= 0) & (mix.weight <= 1)).all()
    w = mix.weight.view(-1, 1, 1, 1)
    torch.testing.assert_close(out, w * batch + (1 - w) * batch[mix.perm])


def test_freq_mixstyle_gives_each_example_a_mix_of_band_statistics(batch):
    out = A.freq_mixstyle(batch, rng(2), 1.0, 0.3)
    mu, mu_out = batch.mean(dim=(1, 3)), out.mean(dim=(1, 3))  # (B, 40) band means
    lo, hi = torch.minimum(mu, mu.min(0).values), torch.maximum(mu, mu.max(0).values)
    # every new band mean is a convex combination of two examples' band means: within the batch's range
    assert ((mu_out >= lo - 1e-4) & (mu_out <= hi + 1e-4)).all()
    assert not torch.allclose(mu_out, mu)


def test_masks_set_one_run_to_the_example_mean_and_leave_the_rest(batch):
    for fn, axis in ((lambda x: A.freq_mask(x, rng(4), 1.0, 8), 2), (lambda x: A.time_mask(x, rng(4), 1.0, 10), 3)):
        out = fn(batch)
        changed = (out != batch)[:, 0].any(dim=2 if axis == 2 else 1)  # (B, positions along the axis)
        for i in range(len(batch)):
            idx = torch.nonzero(changed[i]).flatten()
            if len(idx):
                assert idx.max() - idx.min() + 1 == len(idx) <= (8 if axis == 2 else 10)  # one contiguous run
                sel = out[i, 0, idx] if axis == 2 else out[i, 0, :, idx]
                torch.testing.assert_close(sel, torch.full_like(sel, batch[i].mean().item()))


def test_time_roll_is_a_circular_shift_of_each_example(batch):
    out = A.time_roll(batch, rng(5), 1.0, 10)
    for i in range(len(batch)):
        assert any(torch.equal(out[i], torch.roll(batch[i], s, dims=2)) for s in range(-10, 11))


def test_draws_depend_only_on_seed_epoch_and_batch(batch):
    cfg = A.recipe_defaults("kd")
    a, _ = A.apply(batch, cfg, A.batch_rng(0, 3, 7))
    b, _ = A.apply(batch, cfg, A.batch_rng(0, 3, 7))
    c, _ = A.apply(batch, cfg, A.batch_rng(0, 3, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("bad", [{"mixstyle_p": 1.5}, {"mixup_alpha": 0}, {"freq_mask_bands": -1}, {"nope": 1}])
def test_bad_options_are_refused_with_their_name(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        A.AugmentConfig.coerce(bad)
