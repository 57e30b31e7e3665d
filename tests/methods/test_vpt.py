"""VPT (methods/vpt.py) in a mixed-task batch: its route through the block sequence gives each row its task's prompted
blocks (different prompt counts, deep and shallow) and other rows the frozen blocks; the slot mask; what it refuses."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from tests.conftest import VIT, tiny_kwargs
from tests.training_step import move_trainable

from adaptformer import UnsupportedModelError, build_backbone, create_model
from adaptformer.methods import VPTConfig
from adaptformer.methods.vpt import _slot_mask, prompt_count, prompted_sequences, route


def _prompted(config: VPTConfig, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return move_trainable(create_model(VIT, 5, method=config, init_seed=0, **tiny_kwargs(VIT)), 0.5).eval()


@pytest.mark.parametrize("order_seed", [0, 1])
def test_the_route_runs_each_row_through_its_tasks_prompted_blocks(order_seed: int) -> None:
    frozen = build_backbone(VIT, 5, init_seed=0, **tiny_kwargs(VIT)).eval().blocks  # the same frozen weights
    tasks = [_prompted(VPTConfig(num_tokens=3), 1).blocks, _prompted(VPTConfig(num_tokens=1, deep=False), 2).blocks,
             _prompted(VPTConfig(num_tokens=2), 3).blocks]  # fmt: skip
    assert [prompt_count(b) for b in tasks] == [3, 1, 2]
    generator = torch.Generator().manual_seed(order_seed)
    ids = torch.randperm(11, generator=generator) % 4  # task 3: rows of no VPT task
    x = torch.randn(11, 17, 32, generator=generator)  # (B, N, D): the tokens the blocks read
    present = [(blocks, (ids == k).nonzero().squeeze(1)) for k, blocks in enumerate(tasks)]
    with torch.no_grad():
        out = route(frozen, present, (x,))
        assert out.shape == x.shape
        for blocks, rows in present:
            torch.testing.assert_close(out[rows], blocks(x[rows]), atol=1e-5, rtol=0)
        others = (ids == 3).nonzero().squeeze(1)
        torch.testing.assert_close(out[others], frozen(x[others]), atol=1e-5, rtol=0)
        assert not torch.allclose(tasks[0](x[:2]), frozen(x[:2]), atol=1e-3)  # the prompts change the function


def test_the_slot_mask_hides_exactly_the_slots_a_row_does_not_fill() -> None:
    three, one = _prompted(VPTConfig(num_tokens=3), 1).blocks, _prompted(VPTConfig(num_tokens=1), 2).blocks
    x = torch.zeros(4, 3 + 5, 8)  # 3 slots + 5 tokens
    mask = _slot_mask([(three, torch.tensor([0, 2])), (one, torch.tensor([1]))], x, 3)
    hidden = torch.isinf(mask[:, 0, 0])  # (B, S + N)
    assert mask.shape == (4, 1, 1, 8) and (mask[~torch.isinf(mask)] == 0).all()
    assert hidden.tolist() == [[False] * 8, [False, True, True] + [False] * 5, [False] * 8, [True] * 3 + [False] * 5]
    assert _slot_mask([(three, torch.arange(4))], x, 3) is None  # every row fills every slot: no mask


def test_blocks_outside_one_sequential_are_refused_naming_the_container() -> None:
    model = _prompted(VPTConfig(num_tokens=2), 1)
    plain = build_backbone(VIT, 5, init_seed=0, **tiny_kwargs(VIT))
    assert prompted_sequences(model) == ["blocks"] and prompted_sequences(plain) == []
    other = copy.deepcopy(model)
    other.blocks = nn.ModuleList(list(other.blocks))
    with pytest.raises(UnsupportedModelError, match=r"one nn.Sequential holding them all; \w+.blocks is ModuleList"):
        prompted_sequences(other)
