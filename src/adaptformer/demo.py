"""A short end-to-end run on built-in defaults: adapt a small ViT, train it briefly, save, reload, evaluate.

It needs no downloads: the backbone is a small randomly initialised timm ViT and the task is generated data whose
class is a colour, so a few steps of adapter + head training separate the classes.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from .adapter import AdaptFormerConfig
from .factory import build_backbone, create_model
from .methods import parameter_report
from .saving import load_adapter, save_adapter

logger = logging.getLogger(__name__)

BACKBONE = "vit_tiny_patch16_224"


def colour_task(n: int, num_classes: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class sets the mean colour, plus noise: (N, 3, size, size) and labels (N,)."""
    labels = torch.randint(num_classes, (n,), generator=generator)
    palette = torch.linspace(-1.0, 1.0, num_classes)
    base = torch.stack([palette[labels], palette.flip(0)[labels], palette[labels] * 0.5], dim=1)  # (N, 3)
    noise = 0.3 * torch.randn(n, 3, size, size, generator=generator)
    return base[:, :, None, None] + noise, labels


def run_demo(output_dir: Path | None = None, steps: int = 30, num_classes: int = 4, seed: int = 0) -> dict[str, float]:
    """Train AdaptFormer on the colour task, save the adapter, reload it onto a fresh backbone and evaluate."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    size = 64
    kwargs = {"img_size": size, "depth": 4}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(output_dir) if output_dir else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        # Stand-in for a pre-trained checkpoint: a randomly initialised backbone saved as a timm state_dict.
        checkpoint = out / "backbone.safetensors"
        save_file(build_backbone(BACKBONE, num_classes, **kwargs).state_dict(), str(checkpoint))
        model = create_model(
            BACKBONE, num_classes, adapter=AdaptFormerConfig(bottleneck=16), checkpoint=checkpoint, **kwargs
        )
        print(parameter_report(model))
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
        model.train()
        start = time.perf_counter()
        for step in range(steps):
            x, y = colour_task(32, num_classes, size, gen)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 10 == 0 or step == steps - 1:
                print(f"step {step:3d}  loss {loss.item():.4f}")
        train_seconds = time.perf_counter() - start
        adapter_dir = save_adapter(model, out / "adapter")
        size_kb = (adapter_dir / "adapter_model.safetensors").stat().st_size / 1024

        fresh = load_adapter(build_backbone(BACKBONE, num_classes, checkpoint=checkpoint, **kwargs), adapter_dir)
        fresh.eval()
        model.eval()
        x, y = colour_task(256, num_classes, size, torch.Generator().manual_seed(seed + 1))
        with torch.no_grad():
            logits = fresh(x)
            same = torch.equal(logits, model(x))
        acc = (logits.argmax(1) == y).float().mean().item()
        print(f"adapter saved to {adapter_dir} ({size_kb:.1f} KiB); reloaded logits identical: {same}")
        print(f"held-out accuracy {acc:.3f} (chance {1 / num_classes:.3f}); training took {train_seconds:.1f} s")
    return {"accuracy": acc, "reloaded_identical": float(same), "train_seconds": train_seconds}
