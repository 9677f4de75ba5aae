"""Stage-1 losses (paper Eq. 2-4): L1 + perceptual + lambda * adversarial + codebook.

Both loss functions return ``(loss, logs)``; log keys (``train/rec_l1``, ...) are MLflow-safe
and go straight to the tracker; values are detached tensors, so that logging costs no
device sync until the trainer reads them. The discriminator is passed in rather than owned, so that the
trainer can wrap it in DistributedDataParallel for its own step and call the plain module
(parameters frozen) inside the generator step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codeswap.config import LossConfig
from codeswap.perceptual import PerceptualLoss
from codeswap.quantize import QuantizerOutput

ADAPTIVE_EPS = 1e-4  # as VQGAN: keeps the ratio finite when the GAN gradient vanishes


def adaptive_weight(rec_loss: Tensor, gan_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """VQGAN's lambda = ||grad_L rec_loss|| / (||grad_L gan_loss|| + 1e-4), clamped to
    [0, max_weight] and detached; L is the decoder's last layer."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return adaptive_weight_from_grads(g_rec, g_gan, max_weight)


def adaptive_weight_from_grads(g_rec: Tensor, g_gan: Tensor, max_weight: float = 1e4) -> Tensor:
    """lambda from the two gradients of the last layer (see :func:`adaptive_weight`)."""
    weight = g_rec.float().norm() / (g_gan.float().norm() + ADAPTIVE_EPS)
    return weight.clamp(0.0, max_weight).detach()


def generator_adv_loss(logits_fake: Tensor, kind: str) -> Tensor:
    """Generator side: vanilla is the non-saturating -log D(fake); hinge is -D(fake)."""
    if kind == "vanilla":
        return F.softplus(-logits_fake.float()).mean()
    return -logits_fake.float().mean()


def discriminator_adv_loss(logits_real: Tensor, logits_fake: Tensor, kind: str) -> Tensor:
    """Discriminator side, averaged over real and fake: vanilla is -log D(real) - log(1 - D(fake))."""
    real, fake = logits_real.float(), logits_fake.float()
    if kind == "vanilla":
        return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


class Stage1Loss(nn.Module):
    """The generator and discriminator objectives of stage 1."""

    def __init__(self, cfg: LossConfig, perceptual: PerceptualLoss | None) -> None:
        super().__init__()
        if cfg.perceptual_weight > 0 and cfg.perceptual_net != "none" and perceptual is None:
            raise ValueError(f"perceptual_weight > 0 needs the {cfg.perceptual_net} network")
        self.cfg = cfg
        self.perceptual = perceptual

    def adversarial_on(self, step: int) -> bool:
        """Whether D is trained and the adversarial term counts at this step."""
        return self.cfg.disc_weight > 0 and step >= self.cfg.disc_start

    def generator_loss(self, x: Tensor, rec: Tensor, q: QuantizerOutput, step: int,
                       disc: nn.Module | None = None,
                       last_layer: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """x, rec: (B, 3, H, W) in [-1, 1]. ``disc`` and ``last_layer`` are needed once the
        adversarial term is on (``step >= disc_start``).

        Returns the objective to backpropagate and the logs; ``logs["train/g_total"]`` is the
        loss value (with the GAN on, the objective is a surrogate with the same gradient).
        """
        cfg = self.cfg
        l1 = (x.float() - rec.float()).abs().mean()
        rec_loss = cfg.l1_weight * l1
        logs = {"train/rec_l1": l1.detach()}
        if self.perceptual is not None and cfg.perceptual_weight > 0:
            p = self.perceptual(rec, x)
            rec_loss = rec_loss + cfg.perceptual_weight * p
            logs["train/perceptual"] = p.detach()
        loss = rec_loss + cfg.codebook_weight * q.loss
        if self.adversarial_on(step):
            if disc is None or last_layer is None:
                raise ValueError("the adversarial term needs the discriminator and the decoder's last layer")
            g_adv = generator_adv_loss(disc(rec), cfg.gan_loss)
            if torch.is_grad_enabled() and rec.requires_grad:
                loss, lam = self._surrogate(rec, rec_loss, g_adv, q, last_layer)
            else:
                lam = torch.zeros((), device=x.device)
                loss = loss + cfg.disc_weight * lam * g_adv
            logs["train/g_adv"] = g_adv.detach()
            logs["train/adaptive_weight"] = lam
            total = rec_loss.detach() + cfg.codebook_weight * q.loss.detach() + cfg.disc_weight * lam * g_adv.detach()
        else:
            total = loss.detach()
        logs["train/g_total"] = total
        logs.update({
            "train/codebook": q.codebook_loss.detach(),
            "train/commitment": q.commitment_loss.detach(),
            "train/perplexity": q.perplexity.detach(),
        })
        return loss, logs

    def _surrogate(self, rec: Tensor, rec_loss: Tensor, g_adv: Tensor, q: QuantizerOutput,
                   last_layer: Tensor) -> tuple[Tensor, Tensor]:
        """Objective with the gradient of rec_loss + codebook + disc_weight * lambda * g_adv.

        VQGAN differentiates rec_loss and g_adv w.r.t. the last layer (backward through the
        perceptual net and D), then backpropagates the sum (through them again). Here each
        goes through its network once, down to the image: lambda needs only the last layer's
        share of those image gradients, and the generator's backward starts from their
        weighted sum. The parameter gradients are the same; the returned value is not the
        loss (that is ``logs["train/g_total"]``).
        """
        cfg = self.cfg
        # the perceptual net's and D's graphs are freed here, as soon as they are used
        g_rec_img = torch.autograd.grad(rec_loss, rec)[0]  # (B, 3, H, W)
        g_adv_img = torch.autograd.grad(g_adv, rec)[0]
        w_rec = torch.autograd.grad(rec, last_layer, g_rec_img, retain_graph=True)[0]
        w_adv = torch.autograd.grad(rec, last_layer, g_adv_img, retain_graph=True)[0]
        lam = adaptive_weight_from_grads(w_rec, w_adv, cfg.adaptive_weight_max)
        g_img = (g_rec_img.float() + cfg.disc_weight * lam * g_adv_img.float()).to(rec.dtype)
        surrogate = (rec * g_img).float().sum() + cfg.codebook_weight * q.loss
        return surrogate, lam

    def discriminator_loss(self, logits_real: Tensor, logits_fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits (B, 1, h, w) of D on real images and on detached reconstructions."""
        loss = discriminator_adv_loss(logits_real, logits_fake, self.cfg.gan_loss)
        return loss, {
            "train/d_loss": loss.detach(),
            "train/logits_real": logits_real.float().mean().detach(),
            "train/logits_fake": logits_fake.float().mean().detach(),
        }
