"""Consistency regularisation during training (PACE: Ni, Zhang & Koniusz, NeurIPS 2024, arXiv 2409.17137).

Each adapter's contribution is multiplied by Gaussian noise z ~ N(1, sigma_b^2), one draw per sample and channel
(shared over the tokens), where the method says its contribution comes out (``Method.noise_sites``: AdaptFormer's and
Adapter+'s up-projections, LoRA's updates); sigma_b is ``sigma`` at block ``first_block`` and falls linearly to
sigma / n at the last block (the authors' schedule; earlier blocks get none). The loss adds ``weight`` times the
squared L2 distance between two sets of logits, averaged over the batch:

    pace    the batch runs twice in one forward pass ([x; x]), each copy with its own noise:
            loss = CE(f_1(x), y) + weight * mean_b ||f_1(x_b) - f_2(x_b)||^2
    fast    one pass: the distance to the logits the same sample got in the previous epoch (PACE_fast), kept per
            sample index in :attr:`Consistency.history` and in the training state, so a resumed run continues with
            them; a sample without an earlier prediction (the first epoch) adds no term (the authors' code starts
            from zero logits instead).

The noise is drawn from a generator seeded by (run seed, epoch, the micro-batch's first sample index, process): the
same seed gives the same noise, and a resumed run draws what the uninterrupted one drew. Noise is only drawn while the
model trains (evaluation sees the plain adapters). Dropout and drop-path draw their own masks in each copy of the pace
variant (the authors' code shares them between the two copies).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ..backbones.families import family_blocks
from ..methods.state import require_spec
from ..precision import Precision
from .config.consistency import ConsistencyConfig
from .rng import derive_seed

__all__ = ["Consistency", "site_sigmas"]

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def site_sigmas(model: nn.Module, sites: list[nn.Module], sigma: float, first_block: int) -> list[float]:
    """The noise std of each site: ``sigma * (L - b) / (L - first_block)`` for a site in block b >= first_block of L
    blocks, 0 before ``first_block``."""
    _, blocks = family_blocks(model, what="consistency regularisation")
    block_of = {id(m): b for b, (_, block) in enumerate(blocks) for m in block.modules()}
    count = len(blocks)
    sigmas = []
    for site in sites:
        if id(site) not in block_of:
            raise ValueError(f"a noise site ({type(site).__name__}) is not inside a block of the model")
        b = block_of[id(site)]
        sigmas.append(0.0 if b < first_block or count <= first_block else sigma * (count - b) / (count - first_block))
    return sigmas


class Consistency:
    """The training loss with consistency regularisation, for ``train_one_epoch``: installs the noise on the model's
    adapter sites (forward hooks, active only in training mode) and computes the loss of one micro-batch.

    Args:
        model: the model with its method applied (not the DDP wrapper).
        config: the ``optim.consistency`` section (enabled).
        seed: the run's seed; rank: this process.
        num_samples, num_classes: the training set's size and the logits' width (the fast variant's history).
    """

    def __init__(
        self, model: nn.Module, config: ConsistencyConfig, *, seed: int, rank: int, num_samples: int, num_classes: int
    ) -> None:
        if not config.enabled:
            raise ValueError("optim.consistency.variant is 'off': nothing to regularise")
        method = require_spec(model).registered
        if method.noise_sites is None:
            raise ValueError(f"optim.consistency: method {method.name!r} has no adapter modules (noise_sites)")
        self.config, self.seed, self.rank = config, seed, rank
        sites = method.noise_sites(model)
        if not sites:
            raise ValueError(f"optim.consistency: the model has no {method.title} modules to put noise on")
        self.sigmas = site_sigmas(model, sites, config.sigma, config.first_block)
        device = next(model.parameters()).device
        self.generator = torch.Generator(device=device)
        self.sites = sites
        self.handles: list[Any] = []
        self.install()
        self.history: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None
        if config.variant == "fast":
            self.history = torch.zeros(num_samples, num_classes, device=device)
            self.seen = torch.zeros(num_samples, dtype=torch.bool, device=device)

    def _noise_hook(self, sigma: float) -> Callable[[nn.Module, Any, torch.Tensor], torch.Tensor | None]:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
            if not module.training or sigma == 0.0:
                return None
            shape = (output.shape[0], *([1] * (output.dim() - 2)), output.shape[-1])  # (B, 1, ..., C): per channel
            z = torch.randn(shape, generator=self.generator, device=output.device, dtype=torch.float32)
            return output * (z * sigma + 1.0).to(output.dtype)

        return hook

    def install(self) -> None:
        """Put the noise hooks on the model's sites (done on construction; again after :meth:`remove`)."""
        if not self.handles:
            self.handles = [site.register_forward_hook(self._noise_hook(sigma))
                            for site, sigma in zip(self.sites, self.sigmas, strict=True)]  # fmt: skip

    def remove(self) -> None:
        """Take the noise hooks off the model."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def loss(
        self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor, criterion: Criterion,
        precision: Precision, epoch: int,
    ) -> torch.Tensor:  # fmt: skip
        """The micro-batch's loss: ``criterion`` on the (first pass's) logits plus the weighted consistency term."""
        self.generator.manual_seed(derive_seed(self.seed, epoch, int(ids[0]), self.rank))
        w = self.config.weight
        if self.config.variant == "pace":
            with precision.autocast():
                logits = model(torch.cat([inputs, inputs]))  # (2B, K): two noisy passes in one
            first, second = logits.float().chunk(2)
            return criterion(first, labels) + w * (first - second).square().sum(-1).mean()
        assert self.history is not None and self.seen is not None
        with precision.autocast():
            logits = model(inputs).float()  # (B, K)
        rows = ids.to(self.history.device)
        earlier, seen = self.history[rows], self.seen[rows]
        term = ((logits - earlier).square().sum(-1) * seen).mean()  # rows without an earlier prediction add 0
        with torch.no_grad():
            self.history[rows] = logits.detach()
            self.seen[rows] = True
        return criterion(logits, labels) + w * term

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs (the fast variant's previous-epoch logits); empty for pace."""
        if self.history is None:
            return {}
        return {"history": self.history.cpu(), "seen": self.seen.cpu()}  # type: ignore[union-attr]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.history is None:
            return
        if "history" not in state or state["history"].shape != self.history.shape:
            raise ValueError(
                "the training state holds no previous-epoch logits of this training set for optim.consistency "
                f"variant 'fast' (expected {tuple(self.history.shape)})"
            )
        self.history.copy_(state["history"])
        self.seen.copy_(state["seen"])  # type: ignore[union-attr]
