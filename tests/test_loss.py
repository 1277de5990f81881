"""Unit tests of each loss term on known inputs, of the center update, and of gradient routing."""

from itertools import pairwise

import pytest
import torch

from anomalib_salad import Salad
from anomalib_salad.model.lightning_model import LinearDecay
from anomalib_salad.model.loss import (
    CenterLoss,
    GeneratorLoss,
    LatentKLLoss,
    StructureLoss,
    discriminator_loss,
    generator_adversarial_loss,
)

from .conftest import TINY


def test_lsgan_losses_on_known_values() -> None:
    real, fake = torch.full((4, 1), 0.5), torch.full((4, 1), 0.25)
    # eq. (1)/(2): 1/2 (0.25 - 0)^2 + 1/2 (0.5 - 1)^2
    torch.testing.assert_close(discriminator_loss(real, fake), torch.tensor(0.5 * 0.0625 + 0.5 * 0.25))
    # eq. (3) with c = 1: 1/2 (0.25 - 1)^2 + 1/2 (0.5 - 1)^2
    torch.testing.assert_close(generator_adversarial_loss(fake, real), torch.tensor(0.5 * 0.5625 + 0.5 * 0.25))


def test_structure_loss() -> None:
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    ssim_loss, l1_loss = StructureLoss("ssim"), StructureLoss("l1")
    assert ssim_loss(images, images).abs() < 1e-5  # SSIM(x, x) = 1
    noise_loss = ssim_loss(images, torch.rand_like(images) * 2 - 1)
    assert 0.9 < noise_loss < 1.1  # independent noise: SSIM near 0
    torch.testing.assert_close(l1_loss(images, images + 0.5), torch.tensor(0.5))
    with pytest.raises(ValueError, match="'ssim' or 'l1'"):
        StructureLoss("l2")


def test_center_loss_value() -> None:
    latent = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    center = torch.tensor([1.0, 1.0])
    # 1/2 * mean(||(0, 1)||^2, ||(2, 3)||^2) = 1/2 * (1 + 13) / 2
    torch.testing.assert_close(CenterLoss()(latent, center), torch.tensor(3.5))


def test_center_update_follows_wen_et_al() -> None:
    center = torch.tensor([0.0, 0.0])
    latent = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    CenterLoss(rate=0.5).update_center(center, latent)
    # delta = sum(c - z_i) / (1 + m) = (-9, -12) / 4; c <- c - 0.5 * delta
    torch.testing.assert_close(center, torch.tensor([9 / 8, 12 / 8]))
    for _ in range(200):
        CenterLoss(rate=0.5).update_center(center, latent)
    torch.testing.assert_close(center, latent.mean(0), atol=1e-4, rtol=0)  # converges to the class mean


def test_kl_loss_is_zero_for_standard_normal_statistics() -> None:
    latent = torch.randn(4096, 8)
    latent = (latent - latent.mean(0)) / latent.std(0, unbiased=False)
    assert LatentKLLoss()(latent) < 1e-4
    assert LatentKLLoss()(latent * 3 + 2) > 10


def test_generator_loss_weights() -> None:
    loss = GeneratorLoss(adv_weight=1, structure_weight=10, feature_weight=0, center_weight=2, restoration_weight=3)
    terms = {"adv": torch.tensor(1.0), "str": torch.tensor(2.0), "ct": torch.tensor(3.0), "self": torch.tensor(4.0)}
    torch.testing.assert_close(loss(terms), torch.tensor(1 + 20 + 6 + 12.0))
    model = Salad(**TINY, feature_weight=0, restoration_weight=0)
    assert model.active_terms == {"adv", "str", "ct"}
    assert model.model.restoration_decoder is None
    with pytest.raises(ValueError, match="non-negative"):
        GeneratorLoss(adv_weight=-1)


def _grads(module: torch.nn.Module) -> dict[str, bool]:
    return {name: p.grad is not None and p.grad.abs().sum() > 0 for name, p in module.named_parameters()}


def test_each_term_reaches_exactly_its_networks() -> None:
    model = Salad(**TINY)
    images = torch.rand(4, 1, 32, 32) * 2 - 1
    expected = {
        "str": {"encoder", "decoder"},
        "fea": {"encoder", "decoder"},
        "adv": {"encoder", "decoder", "image_discriminator", "feature_discriminator"},
        "ct": {"encoder"},
        "self": {"encoder", "restoration_decoder"},
    }
    for term, networks in expected.items():
        model.zero_grad(set_to_none=True)
        terms, _ = model._generator_terms(images)
        terms[term].backward()
        reached = {name.split(".")[0] for name, hit in _grads(model.model).items() if hit}
        assert reached == networks, term


def test_optimizer_steps_update_only_their_side() -> None:
    """Through Lightning's manual optimisation: G step moves only E/D/D', D step only D_I/D_F."""
    model = Salad(**TINY)
    generator, discriminator = model.model.generator_modules(), model.model.discriminator_modules()
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=1e-2) for m in (generator, discriminator))
    images = torch.rand(4, 1, 32, 32) * 2 - 1

    before = {n: p.clone() for n, p in model.model.named_parameters()}
    for p in discriminator.parameters():
        p.requires_grad_(False)  # what toggle_optimizer does
    terms, samples = model._generator_terms(images)
    model.loss(terms).backward()
    assert all(p.grad is None for p in discriminator.parameters())
    opt_g.step()
    changed = {n.split(".")[0] for n, p in model.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"encoder", "decoder", "restoration_decoder"}

    for p in discriminator.parameters():
        p.requires_grad_(True)
    for p in generator.parameters():
        p.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    before = {n: p.clone() for n, p in model.model.named_parameters()}
    model._discriminator_loss(images, {k: v.detach() for k, v in samples.items()}).backward()
    assert all(p.grad is None for p in generator.parameters())
    opt_d.step()
    changed = {n.split(".")[0] for n, p in model.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"image_discriminator", "feature_discriminator"}


def test_zero_weights_skip_compute() -> None:
    model = Salad(**TINY, adv_weight=0, feature_weight=0, restoration_weight=0, structure_weight=0)
    assert model.model.image_discriminator is None
    assert model.model.restoration_decoder is None
    assert model.proxy_task is None
    calls = []
    model.model.decoder.register_forward_hook(lambda *_: calls.append("decoder"))
    terms, _ = model._generator_terms(torch.rand(2, 1, 32, 32))
    assert set(terms) == {"ct"}
    assert calls == []  # no decoder pass when no term needs one


def test_linear_decay_matches_the_paper_schedule() -> None:
    schedule = LinearDecay(total_epochs=200, constant_epochs=100)
    factors = [schedule(epoch) for epoch in range(200)]
    assert factors[:100] == [1.0] * 100
    assert factors[100] == pytest.approx(100 / 101)
    assert factors[199] == pytest.approx(1 / 101)
    assert all(a > b for a, b in pairwise(factors[99:]))
