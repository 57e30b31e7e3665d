"""Visual Prompt Tuning (Jia et al., ECCV 2022), the paper's prompt baseline.

N learnable tokens (xavier-uniform init) are prepended to the token sequence. VPT-deep gives every block its own
prompts and strips them after the block, so the backbone's pooling (CLS token or mean) never sees them; VPT-shallow
prepends once before the first block and strips after the last. The three roles: :class:`VPTConfig`, :func:`attach`
(a ``vpt`` module in each prompted block, whose class becomes :class:`PromptedViTBlock`; prompts live at
``blocks.{i}.vpt.tokens``, backbone names unchanged) and :func:`prompt_modules` (what trains, found by type).

In a mixed-task batch (:func:`route`, the protocol's :class:`~adaptformer.methods.protocol.ModuleSite` at the block
sequence, since prompts change the token count for every block after the first) the whole batch gets S prompt slots in
front of its tokens, S the largest prompt count among the tasks present. Before each block, every task whose block
prepends writes its prompts into the first P slots of its rows (VPT-deep: a block's new prompts replace the last
block's outputs there, which is what strip-then-prepend computes; VPT-shallow: written once, carried through). Slots a
row does not use are masked out as attention keys, so they never reach its real tokens; after the last block the slots
are stripped. Attention is blind to token order inside a ViT block (positions are embedded before the blocks), so per
row this is its task's own model. The mask is dropped when every row fills all S slots. Tasks with different prompt
counts, deep and shallow, and rows of other methods' tasks (all slots masked) share the batch; the trunk's own blocks
run in it, with other methods' modules (AdaptFormer, Adapter+, LoRA) routing their rows inside them.

On a transformers backbone (``hf:<folder>``) the layers sit in an ``nn.ModuleList`` that the transformers model's own
forward loops over, so the site is that model (:func:`prompted_models`): :func:`route_layers` runs its forward with
hooks on its layers that do the same (slots, prompts, the mask as each layer's ``attention_mask``, the strip).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from ..backbones.families import (
    BlockClasses,
    BlockFamily,
    adapted_class,
    block_width,
    chosen_blocks,
    families,
    family_blocks,
    find_family,
    install,
    qualified_name,
)
from ..backbones.hf.names import HF_FAMILY_NAMES
from ..errors import UnsupportedModelError
from ..validation import check_probability
from .protocol import ModuleSite, TaskRows
from .registry import Method, MethodConfig


@dataclass(frozen=True)
class VPTConfig(MethodConfig):
    """Prompt tokens for the VPT baseline.

    Args:
        num_tokens: prompt tokens per prompted layer.
        deep: true for VPT-deep (new prompts at every block), false for VPT-shallow (first block only).
        dropout: dropout on the prompt tokens during training.
    """

    num_tokens: int = 1
    deep: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.num_tokens, bool) or not isinstance(self.num_tokens, int) or self.num_tokens < 1:
            raise ValueError(f"num_tokens must be a positive int, got {self.num_tokens!r}")
        if not isinstance(self.deep, bool):
            raise ValueError(f"deep must be true or false, got {self.deep!r}")
        check_probability("dropout", self.dropout)


class PromptTokens(nn.Module):
    """The prompts of one block: prepends ``num_tokens`` tokens and/or strips them again after the block."""

    def __init__(self, dim: int, num_tokens: int, prepend: bool, strip: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.prepend = prepend
        self.strip = strip
        self.dropout = nn.Dropout(dropout)
        if prepend:
            self.tokens = nn.Parameter(torch.empty(1, num_tokens, dim))
            nn.init.xavier_uniform_(self.tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prompts = self.dropout(self.tokens.expand(x.shape[0], -1, -1)).to(x.dtype)  # (B, P, D)
        return torch.cat([prompts, x], dim=1)  # (B, P + N, D)

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, prepend={self.prepend}, strip={self.strip}"


class PromptedViTBlock(Block):
    """timm ``vision_transformer.Block`` that prepends its prompts before and/or strips them after itself."""

    vpt: PromptTokens

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if self.vpt.prepend:
            x = self.vpt(x)  # (B, P + N, D)
        x = super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        if self.vpt.strip:
            x = x[:, self.vpt.num_tokens :]  # (B, N, D)
        return x


def prompt_modules(model: nn.Module) -> list[nn.Module]:
    """The model's prompt modules, found by type."""
    return [m for m in model.modules() if isinstance(m, PromptTokens)]


def _prompted_layer(family: BlockFamily) -> type[nn.Module]:
    """A transformers encoder layer (:mod:`adaptformer.backbones.hf.layers`) that prepends its prompts before and/or
    strips them after itself (the layer's own forward in between)."""

    def forward(self: nn.Module, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> object:
        if self.vpt.prepend:
            hidden_states = self.vpt(hidden_states)  # (B, P + N, D)
        x, _, h = family.halves(self, hidden_states, *args, **kwargs)  # type: ignore[misc]
        out = x + h
        return family.output(out[:, self.vpt.num_tokens :] if self.vpt.strip else out)  # (B, N, D)

    return adapted_class(family, "Prompted", forward, __name__)


# family name -> its prompted block class: timm's ViT and transformers' layers whose attention takes extra tokens
PROMPTED_BLOCKS = BlockClasses({"vit": PromptedViTBlock}, _prompted_layer)


def attach(model: nn.Module, config: VPTConfig) -> nn.Module:
    """Attach VPT prompts to a model of a family in ``PROMPTED_BLOCKS`` in place (UnsupportedModelError for other
    block families, for a transformers layer whose attention cannot take prompt tokens, saying why, or for blocks
    another method adapted already)."""
    if prompt_modules(model):
        raise ValueError(f"{type(model).__name__} already has prompts")
    try:
        family, blocks, _ = chosen_blocks(model, tuple(PROMPTED_BLOCKS), None, what="VPT")
    except UnsupportedModelError as error:
        if any(f.is_block(m) for f in families() if f.name in PROMPTED_BLOCKS for m in model.modules()):
            raise  # blocks that another method made its own: chosen_blocks names the block
        kinds = sorted({qualified_name(type(m)) for m in model.modules() if "block" in type(m).__name__.lower()})
        raise UnsupportedModelError(
            f"VPT supports timm ViT blocks ({qualified_name(Block)}); {type(model).__name__} has {kinds} (and the "
            f"transformers layers of hf: backbones: {', '.join(HF_FAMILY_NAMES)})"
        ) from error
    refusal = family.no_prompts(model) if family.no_prompts is not None else None
    if refusal is not None:
        raise UnsupportedModelError(f"VPT cannot prompt {qualified_name(family.block_type)}: {refusal}")
    last = len(blocks) - 1
    for i, (_, block) in enumerate(blocks):
        prepend = config.deep or i == 0
        strip = config.deep or i == last
        if not (prepend or strip):
            continue
        tokens = PromptTokens(block_width(block), config.num_tokens, prepend, strip, config.dropout)
        install(block, "vpt", tokens, PROMPTED_BLOCKS[family.name])
    return model


# ------------------------------------------------------------------------------------------------ the protocol


def prompted_sequences(model: nn.Module) -> list[str]:
    """The path of the ``nn.Sequential`` holding ``model``'s prompted blocks (VPT's mixed-batch site): the route runs
    the blocks one by one, so it must hold every block of the model, in forward order."""
    prompted = [path for path, m in model.named_modules() if isinstance(getattr(m, "vpt", None), PromptTokens)]
    if not prompted or find_family(model, what="VPT").halves is not None:  # transformers' layers: prompted_models
        return []
    parent = prompted[0].rpartition(".")[0]
    container = model.get_submodule(parent)
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    if not isinstance(container, nn.Sequential) or list(container) != blocks:  # transformers: an nn.ModuleList
        raise UnsupportedModelError(
            f"VPT in a mixed-task batch runs a ViT's blocks one by one from one nn.Sequential holding them all; "
            f"{type(model).__name__}.{parent} is {type(container).__name__}"
        )
    return [parent]


def prompted_models(model: nn.Module) -> list[str]:
    """The path of the transformers model whose layers hold prompts (VPT's mixed-batch site on an ``hf:`` backbone):
    :func:`route_layers` runs that model's own forward (its embeddings, masks and final norm) with the routing done
    around each of its layers. UnsupportedModelError for a layer that takes no attention mask (VideoMAE's)."""
    if not prompt_modules(model):
        return []
    family = find_family(model, what="VPT")
    if family.halves is None:  # timm's blocks: prompted_sequences
        return []
    if "attention_mask" not in inspect.signature(family.block_type.forward).parameters:
        raise UnsupportedModelError(
            f"VPT in a mixed-task batch masks the prompt slots a row does not use in every layer's attention; "
            f"{qualified_name(family.block_type)} takes no attention mask"
        )
    attribute = getattr(model, "attribute", None)  # HFBackbone: the transformers model's attribute
    if not isinstance(attribute, str):
        raise UnsupportedModelError(f"VPT in a mixed-task batch: {type(model).__name__} is not an hf: backbone")
    return [attribute]


def prompt_count(blocks: nn.Module) -> int:
    """How many prompt tokens a task's prompted block sequence carries."""
    return max(m.num_tokens for m in blocks.modules() if isinstance(m, PromptTokens))


def _slot_mask(present: TaskRows, x: torch.Tensor, slots: int) -> torch.Tensor | None:
    """The additive attention mask (B, 1, 1, S + N) that hides the prompt slots each row does not use (0: attend,
    -inf: never); None when every row fills every slot."""
    batch, length = x.shape[0], x.shape[1]
    used = torch.zeros(batch, dtype=torch.long, device=x.device)  # prompt slots each row fills
    for blocks, rows in present:
        used[rows] = prompt_count(blocks)
    if not torch.compiler.is_compiling() and bool((used == slots).all()):  # traced: which rows are whose is data
        return None
    position = torch.arange(length, device=x.device)  # (S + N,)
    hidden = (position[None, :] < slots) & (position[None, :] >= used[:, None])  # (B, S + N)
    mask = torch.zeros(batch, length, dtype=x.dtype, device=x.device).masked_fill(hidden, float("-inf"))
    return mask[:, None, None, :]  # (B, 1, 1, S + N): every head and query of a row


def route(frozen: nn.Module, present: TaskRows, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A mixed-task batch through the block sequence: ``frozen`` (the trunk's blocks) with each present task's prompts
    on its rows (``present``: each task's own prompted block sequence), as the module docstring says."""
    (x,) = inputs  # (B, N, D)
    slots = max(prompt_count(blocks) for blocks, _ in present)
    x = torch.cat([x.new_zeros(x.shape[0], slots, x.shape[2]), x], dim=1)  # (B, S + N, D): prompt slots first
    mask = _slot_mask(present, x, slots)
    for i, block in enumerate(frozen):
        prompting = [(b[i].vpt, rows) for b, rows in present if isinstance(b[i], PromptedViTBlock) and b[i].vpt.prepend]
        if prompting:
            x = x.clone()  # a block's output: written in place below
            for vpt, rows in prompting:
                x[rows, : vpt.num_tokens] = vpt.tokens.to(x.dtype)  # (1, P, D) over (n, P, D)
        x = block(x) if mask is None else block(x, attn_mask=mask)
    return x[:, slots:]  # (B, N, D)


def _with_mask(args: tuple[Any, ...], kwargs: dict[str, Any], x: torch.Tensor, mask: torch.Tensor | None) -> tuple:
    """A transformers layer's call ``(hidden_states, attention_mask, ...)`` with ``x`` and the slot mask instead."""
    given = args[1] if len(args) > 1 else kwargs.get("attention_mask")
    if given is not None:
        raise UnsupportedModelError("VPT in a mixed-task batch: the layer was given an attention mask of its own")
    if len(args) > 1:
        return (x, mask, *args[2:]), kwargs
    if mask is not None:
        kwargs = {**kwargs, "attention_mask": mask}
    return (x, *args[1:]), kwargs


def route_layers(frozen: nn.Module, present: TaskRows, inputs: tuple[torch.Tensor, ...]) -> Any:
    """A mixed-task batch through a transformers model (``frozen``, the trunk's) whose layers take prompts: its own
    forward runs, with hooks on its layers doing what :func:`route` does between timm's blocks (the slots prepended
    before the first layer, each task's prompts written on its rows before each of its prompting layers, the slot
    mask as every layer's attention mask, the slots stripped after the last layer)."""
    _, layers = family_blocks(frozen, what="VPT")
    tasks = [([layer for _, layer in family_blocks(model, what="VPT")[1]], rows) for model, rows in present]
    slots = max(prompt_count(model) for model, _ in present)
    state: dict[str, torch.Tensor | None] = {}

    def before(index: int) -> Callable[..., tuple]:
        def hook(layer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple:
            x = args[0]  # (B, N, D), (B, S + N, D) after the first layer
            if index == 0:
                x = torch.cat([x.new_zeros(x.shape[0], slots, x.shape[2]), x], dim=1)  # prompt slots first
                state["mask"] = _slot_mask(present, x, slots)
            writing = [(own[index].vpt, rows) for own, rows in tasks if _prepends(own[index])]
            if writing:
                x = x.clone()  # a layer's output: written in place below
                for vpt, rows in writing:
                    x[rows, : vpt.num_tokens] = vpt.tokens.to(x.dtype)  # (1, P, D) over (n, P, D)
            return _with_mask(args, kwargs, x, state["mask"])

        return hook

    def strip(layer: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return output[:, slots:]  # (B, N, D)

    handles = [layer.register_forward_pre_hook(before(i), with_kwargs=True) for i, (_, layer) in enumerate(layers)]
    handles.append(layers[-1][1].register_forward_hook(strip))
    try:
        return frozen(*inputs)
    finally:
        for handle in handles:
            handle.remove()


def _prepends(layer: nn.Module) -> bool:
    vpt = getattr(layer, "vpt", None)
    return isinstance(vpt, PromptTokens) and vpt.prepend


METHOD = Method(
    name="vpt",
    config=VPTConfig,
    attach=attach,
    modules=prompt_modules,
    summary="visual prompt tuning: learnable tokens prepended at every block (deep) or the first (Jia et al., 2022)",
    group="prompts",
    weight_decay=False,
    title="VPT",
    module_sites=(
        ModuleSite(find=prompted_sequences, route=route, label="block sequence"),
        ModuleSite(find=prompted_models, route=route_layers, label="transformers model"),
    ),
    batch_refusal=None,
    # no interpolation and no noise sites: the prompts are extra tokens that attention mixes in, not an output added
    # to the frozen function, so no factor scales their contribution (a model with scaled prompt tokens still
    # attends to them) and no module's output is that contribution
    interpolation_refusal="its prompt tokens join the attention as extra tokens; no factor scales their "
    "contribution between the frozen backbone (alpha = 0) and the trained model (alpha = 1)",
)
