"""``LVLMFamily``: what tl-lvlm needs to know about one Hugging Face LVLM architecture.

Modelled on TransformerLens's ``ArchitectureAdapter``: a family declares its
capabilities as class attributes and overrides a method for each quirk. Generic
code (the model wrapper, the ablation hooks, the engine, knockout, image
attribution) asks the family and never branches on the architecture itself.

A family class is looked up by ``config.architectures[0]`` (:func:`family_of`);
``HookedLVLM`` holds an instance bound to its Hugging Face model
(``model.family``). Class methods are what loading needs before a model exists.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_lvlm.families.geometry import PatchGeometry
from tl_lvlm.inputs import LVLMInputs
from tl_lvlm.inputs.templates import IMAGE_PLACEHOLDER, QUESTION_PLACEHOLDER, split_template

#: Analyses a family may refuse (:attr:`LVLMFamily.refused_analyses`):
#: ``"ablation"``: image-K/V head ablation (the hook reference, and so head and image
#: attribution); ``"engine"``: the shared-prefix :class:`~tl_lvlm.ablation.engine.AblationEngine`
#: (scope "text"); ``"knockout"``: attention knockout; ``"image_attribution"``:
#: image-token maps and object masks.
ANALYSES = ("ablation", "engine", "knockout", "image_attribution")


def _unwrapped(module: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face module under a TransformerBridge component (itself when unwrapped)."""
    return getattr(module, "original_component", module)


@contextlib.contextmanager
def _no_processor_reload() -> Iterator[None]:
    """Stop the bridge's boot from re-loading the processor by name.

    We hand the bridge our processor. Left alone, its boot calls
    ``AutoProcessor.from_pretrained(model_name)`` and, when that fails (a model
    built in memory), pip-installs torchvision into the running environment.
    """
    from transformer_lens.model_bridge.sources.transformers import source

    original = source.load_modality_processor
    source.load_modality_processor = lambda *args, **kwargs: None
    try:
        yield
    finally:
        source.load_modality_processor = original


@contextlib.contextmanager
def adapter_registered(architecture: str, adapter: type) -> Iterator[None]:
    """TransformerLens selects ``adapter`` for ``architecture`` until the block ends.

    Registers it with ``ArchitectureAdapterFactory.register_adapter`` and, since
    TransformerLens 4.3 recognises an architecture by its module-level
    ``SUPPORTED_ARCHITECTURES`` (``determine_architecture_from_hf_config``) before it asks
    the factory's registry, in that table too. Both entries are restored afterwards
    (what was there before, or nothing), so tl-lvlm's adapters are seen only by the boots
    it runs itself.
    """
    from transformer_lens.factories import architecture_adapter_factory as factory

    tables = (factory.ArchitectureAdapterFactory._adapters, factory.SUPPORTED_ARCHITECTURES)
    before = [table.get(architecture) for table in tables]
    factory.ArchitectureAdapterFactory.register_adapter(architecture, adapter)
    factory.SUPPORTED_ARCHITECTURES[architecture] = adapter
    try:
        yield
    finally:
        for table, entry in zip(tables, before, strict=True):
            if entry is None:
                table.pop(architecture, None)
            else:
                table[architecture] = entry


class LVLMFamily:
    """Base class of the LVLM families; subclasses set the class attributes they change.

    Capabilities (class attributes):
        name: the family's name in messages and docs.
        architecture: ``config.architectures[0]``, also the HF model class loaded.
        template: default prompt template; None = derived from the processor's chat
            template (:meth:`template_from_chat`).
        image_prompt: what a template's ``<image>`` becomes in the text handed to the
            processor, which expands it into the image tokens.
        fixed_resolution: every image is resized to one size, so already-processed
            ``pixel_values`` tensors may be passed; False when the tiling (and the number
            of image tokens) follows the image size.
        bidirectional_image: image tokens attend to each other both ways, not causally.
        interleaved_image: the image's feature tokens are interleaved with marker tokens
            that are not image features (tile separators, row breaks): the image group
            holds the feature tokens only, and the image span, from the first to the last
            of them, holds the markers between them too (:meth:`image_text`).
        nested_images: the processor takes one list of images per prompt.
        sequence_inputs: processor outputs with one entry per token (``[batch, pos]``),
            cut with the tokens when the engine runs a part of the prompt.
        attention_edits: how the hook reference and knockout edit attention:
            ``"scores"``, through ``hook_attn_scores`` / ``hook_z`` (the bridge recomputes
            attention, so score edits reach the softmax); ``"recompute"``, by recomputing
            attention from ``hook_q/k/v`` into ``hook_z`` (the bridge keeps the HF attention
            native and discards score edits). In the spirit of TransformerLens's
            ``maintain_native_attention``; the ablation and flow code pick their hooks by it.
        bridge_architecture: the architecture name TransformerLens picks its adapter by
            when the bridge boots; None = the HF class's name. For a variant whose modules
            an adapter of another architecture maps exactly.
        unsupported: why the whole family is refused at load time, or None.
        refused_analyses: analysis (:data:`ANALYSES`) -> why this family refuses it (a
            model also refuses what its checkpoint's layers rule out: :meth:`refusals`).
        softmax_layer_types: the decoder config's ``layer_types`` that are softmax
            attention over positions (:meth:`non_softmax_layers`).

    Args:
        hf_model: the family's Hugging Face model (the bridge may have wrapped its
            submodules in place; the accessors unwrap them).
    """

    name: ClassVar[str] = ""
    architecture: ClassVar[str] = ""
    template: ClassVar[str | None] = None
    image_prompt: ClassVar[str] = IMAGE_PLACEHOLDER
    fixed_resolution: ClassVar[bool] = True
    bidirectional_image: ClassVar[bool] = False
    interleaved_image: ClassVar[bool] = False
    nested_images: ClassVar[bool] = False
    sequence_inputs: ClassVar[tuple[str, ...]] = ()
    attention_edits: ClassVar[Literal["scores", "recompute"]] = "scores"
    bridge_architecture: ClassVar[str | None] = None
    unsupported: ClassVar[str | None] = None
    refused_analyses: ClassVar[Mapping[str, str]] = {}
    softmax_layer_types: ClassVar[frozenset[str]] = frozenset(
        {"full_attention", "sliding_attention", "chunked_attention"}
    )

    def __init__(self, hf_model: torch.nn.Module):
        self.hf_model = hf_model

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.architecture!r})"

    # ------------------------------------------------------------------ loading
    @classmethod
    def model_class(cls) -> type:
        """The Hugging Face class of :attr:`architecture`."""
        import transformers

        return getattr(transformers, cls.architecture)

    @classmethod
    def load_processor(cls, path: str | Path):
        """The checkpoint's processor (``AutoProcessor`` unless a family overrides it)."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path)

    @classmethod
    def load_model(cls, path: str | Path, dtype: torch.dtype) -> torch.nn.Module:
        """The Hugging Face model in ``dtype`` with eager attention (the bridge needs it)."""
        return cls.model_class().from_pretrained(path, dtype=dtype, attn_implementation="eager")

    @classmethod
    def boot_bridge(cls, name: str, hf_model: torch.nn.Module, tokenizer):
        """Wrap ``hf_model`` in a TransformerLens ``TransformerBridge`` (in place).

        The bridge picks its adapter by ``config.architectures``; a registered family
        may name an architecture of its own, so the boot sees the HF class's name (or
        :attr:`bridge_architecture`).
        """
        from transformer_lens.model_bridge import TransformerBridge

        config = hf_model.config
        named = config.architectures
        config.architectures = [cls.bridge_architecture or type(hf_model).__name__]
        try:
            with _no_processor_reload():
                return TransformerBridge.boot_transformers(
                    name, hf_model=hf_model.eval(), tokenizer=tokenizer
                )
        finally:
            config.architectures = named

    # ---------------------------------------------------------------- analyses
    def non_softmax_layers(self) -> dict[int, str]:
        """Decoder layers whose attention is not softmax attention over positions, with their
        type: the decoder config's ``layer_types`` entries outside
        :attr:`softmax_layer_types` (e.g. the ``"linear_attention"`` layers of hybrid models
        such as Qwen3.5). Empty when every layer is softmax attention or the config lists
        no layer types."""
        types = getattr(self.decoder_config, "layer_types", None) or ()
        return {i: t for i, t in enumerate(types) if t not in self.softmax_layer_types}

    def softmax_layers(self) -> list[int]:
        """The decoder layers that are softmax attention over positions."""
        other = self.non_softmax_layers()
        return [i for i in range(int(self.decoder_config.num_hidden_layers)) if i not in other]

    def refusals(self) -> dict[str, str]:
        """Analysis -> why this model refuses it: :attr:`refused_analyses`, and where some
        decoder layers are not softmax attention (:meth:`non_softmax_layers`) image-K/V
        ablation and the engine (so head and image-token attribution), which replace
        softmax attention's keys and values per head and position."""
        out = dict(self.refused_analyses)
        layers = self.non_softmax_layers()
        if layers:
            kinds = sorted(set(layers.values()))
            reason = (
                f"decoder layers {sorted(layers)} are {' / '.join(kinds)}, not softmax "
                "attention over positions, and image-K/V head ablation replaces a softmax "
                "head's keys and values at image positions"
            )
            for analysis in ("ablation", "engine"):
                out.setdefault(analysis, reason)
        return out

    def supports(self, analysis: str) -> bool:
        """Whether this model runs ``analysis`` (one of :data:`ANALYSES`)."""
        if analysis not in ANALYSES:
            raise ValueError(f"unknown analysis {analysis!r}; expected one of {ANALYSES}")
        return analysis not in self.refusals()

    def require(self, analysis: str) -> None:
        """Raise ``NotImplementedError`` naming the family and the reason if this model
        refuses ``analysis`` (:meth:`refusals`): the one check every analysis makes."""
        if not self.supports(analysis):
            raise NotImplementedError(
                f"{self.name} does not support {analysis.replace('_', ' ')}: "
                f"{self.refusals()[analysis]}"
            )

    # ----------------------------------------------------------------- prompts
    @classmethod
    def default_template(cls, processor) -> str | None:
        """:attr:`template`, else the processor's chat template (:meth:`template_from_chat`)."""
        return cls.template or cls.template_from_chat(processor)

    @classmethod
    def template_from_chat(cls, processor) -> str | None:
        """The processor's chat template for one user turn (image, then question), as a template.

        Renders the chat template with the text ``{question}`` after one image and
        replaces the family's image prompt with ``<image>``. A BOS the template
        writes itself is dropped when the tokenizer adds one anyway, since the
        processor tokenizes with special tokens. None when there is no chat template.
        """
        if not getattr(processor, "chat_template", None):
            return None
        messages = [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": QUESTION_PLACEHOLDER}],
            }
        ]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        text = text.replace(cls.image_prompt, IMAGE_PLACEHOLDER)
        tokenizer = processor.tokenizer
        bos = tokenizer.bos_token
        adds_bos = bos is not None and tokenizer("")["input_ids"][:1] == [tokenizer.bos_token_id]
        if adds_bos and text.startswith(bos):
            text = text[len(bos) :]
        split_template(text)
        return text

    @classmethod
    def expand_image(cls, processor, n_image: int) -> str:
        """The text the processor turns :attr:`image_prompt` into, with ``n_image`` image
        tokens."""
        return cls.image_prompt.replace(processor.image_token, processor.image_token * n_image)

    @classmethod
    def image_text(cls, processor, ids: Int[Tensor, " pos"], image: Int[Tensor, " n_image"]) -> str:
        """The text the processor turned :attr:`image_prompt` into in one unpadded row.

        ``ids`` are the row's tokens and ``image`` the positions of its image tokens.
        Default: :meth:`expand_image` with their count; families whose expansion depends
        on the image (tiles, rows of patches) read it from ``ids``.
        """
        return cls.expand_image(processor, image.numel())

    @classmethod
    def process(cls, processor, images: Sequence, texts: Sequence[str]) -> Mapping[str, Tensor]:
        """Run the processor on one image per text (left-padded, PyTorch tensors)."""
        if cls.nested_images:
            images = [[image] for image in images]
        return processor(images=list(images), text=list(texts), return_tensors="pt", padding=True)

    # ------------------------------------------------------------------ inputs
    def position_ids(self, inputs: LVLMInputs) -> Int[Tensor, "... batch pos"]:
        """Position ids of a prepared batch for the model's forward; the batch is axis -2.

        Default: positions that skip left padding (:attr:`LVLMInputs.position_ids`).
        The engine cuts the last axis of one row's ids for its prefix and suffix runs.
        """
        return inputs.position_ids

    def model_kwargs(self, inputs: LVLMInputs) -> dict[str, Tensor]:
        """Keyword arguments for the bridge / HF forward besides ``input_ids``."""
        return {
            "pixel_values": inputs.pixel_values,
            "attention_mask": inputs.attention_mask,
            "position_ids": self.position_ids(inputs),
            **inputs.extra,
        }

    # ------------------------------------------------------------- model facts
    @property
    def config(self):
        """The Hugging Face model's (top-level) config."""
        return self.hf_model.config

    @property
    def decoder(self) -> torch.nn.Module:
        """The decoder (embeddings, layers, final norm; no LM head)."""
        return self.hf_model.model.language_model

    @property
    def decoder_config(self):
        """The decoder's config (also where the engine selects its attention function)."""
        return self.decoder.config

    @property
    def unembedding(self) -> torch.nn.Linear:
        """The unembedding (``[d_vocab, d_model]`` weight), unwrapped from the bridge."""
        return _unwrapped(self.hf_model.lm_head)

    @property
    def image_token_id(self) -> int:
        return int(self.config.image_token_id)

    @property
    def image_size(self) -> int:
        """Side of the square image the vision tower takes (blank images, pixel_values checks)."""
        return int(self.config.vision_config.image_size)

    @property
    def n_ctx(self) -> int:
        return int(self.decoder_config.max_position_embeddings)

    def attention_slot(self, layer: int) -> tuple[torch.nn.Module, str]:
        """The decoder block of layer ``layer`` and the attribute its attention module is under."""
        return _unwrapped(self.decoder.layers[layer]), "self_attn"

    def mlp_slot(self, layer: int) -> tuple[torch.nn.Module, str]:
        """The decoder block of layer ``layer`` and the attribute its MLP is under (the MLP
        takes the hidden states first and its output is added to the residual stream)."""
        return _unwrapped(self.decoder.layers[layer]), "mlp"

    def attention(self, layer: int) -> torch.nn.Module:
        """The Hugging Face attention module of decoder layer ``layer``."""
        block, name = self.attention_slot(layer)
        return _unwrapped(getattr(block, name))

    def attention_scaling(self, layer: int) -> float:
        """The factor the attention scores of ``layer`` are multiplied by."""
        return float(self.attention(layer).scaling)

    # ------------------------------------------------------------------ logits
    def final_logits(
        self, hidden: Float[Tensor, "... d_model"], vocab: Int[Tensor, " n_vocab"] | None = None
    ) -> Float[Tensor, "... n_vocab"]:
        """Logits in fp32 from the final hidden state (after the final norm).

        ``hidden @ lm_head.weight.T`` computed in fp32 whatever the model's dtype, so
        that a bf16 model's target logits are not rounded to bf16's grid (a step of
        0.125 for logits of 16-32); with the text config's
        ``final_logit_softcapping``, the same ``tanh`` capping HF applies.
        ``vocab``: only these token ids' logits (``[..., len(vocab)]``); only their rows
        of the unembedding are cast to fp32, not the whole ``[d_vocab, d_model]`` matrix.
        """
        head = self.unembedding
        weight, bias = head.weight, getattr(head, "bias", None)
        if vocab is None:
            logits = hidden.float() @ weight.float().T
        else:
            weight = weight[vocab].float()
            bias = None if bias is None else bias[vocab]
            # A product and a sum per row, not a matrix-vector product: BLAS blocks the
            # latter by the number of rows, so a row's logit would round differently
            # (about 1e-7) with the batch it is in.
            logits = (hidden.float()[..., None, :] * weight).sum(-1)
        if bias is not None:
            logits = logits + bias.float()
        cap = getattr(self.decoder_config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def residual_inputs(self, layer: int) -> list[str]:
        """Hook points whose outputs ``[batch, pos, d_model]`` are added to the residual
        stream after block ``layer`` and before block ``layer + 1`` (besides the block's
        attention and MLP outputs), e.g. image features injected into the decoder.

        ``cache.decompose_resid`` of a HookedLVLM lists them as components, so the
        decomposition adds up. Default: none.
        """
        return []

    # ---------------------------------------------------------- key/value hooks
    def query_hook(self, layer: int) -> tuple[str, int]:
        """The hook holding ``layer``'s queries as RoPE receives them, and its position axis
        (``hook_q``, ``[batch, pos, n_heads, d_head]``; read by the recomputed-attention
        hooks, for families whose attention the bridge keeps native)."""
        return f"blocks.{layer}.attn.hook_q", 1

    def key_hook(self, layer: int) -> tuple[str, int]:
        """The hook holding ``layer``'s keys as RoPE receives them, and its position axis.

        ``hook_k`` (``[batch, pos, n_kv_heads, d_head]``); with q/k norms the keys are
        normalized before RoPE, at ``hook_k_normed`` (``[batch, n_kv_heads, pos, d_head]``).
        A LLaVA-style family may sit on any decoder, so the base class asks the layer.
        """
        if hasattr(self.attention(layer), "k_norm"):
            return f"blocks.{layer}.attn.hook_k_normed", 2
        return f"blocks.{layer}.attn.hook_k", 1

    def kv_source(self, layer: int) -> int:
        """The decoder layer whose keys and values ``layer`` attends to (itself unless the
        architecture shares K/V across layers); the engine reads that layer's prefix cache."""
        return layer

    def value_hook(self, layer: int) -> tuple[str, int]:
        """The hook holding ``layer``'s values as attention reads them, and its position axis
        (``hook_v``, ``[batch, pos, n_kv_heads, d_head]``, unless a family normalizes them)."""
        return f"blocks.{layer}.attn.hook_v", 1

    # ------------------------------------------------------------------ rotary
    def rotary_fn(self, layer: int) -> Callable:
        """The ``apply_rotary_pos_emb(q, k, cos, sin)`` of ``layer``'s HF attention code.

        Baseline keys are rotated with the very function the model uses, so that a
        baseline equal to the clean keys reproduces the clean scores bit for bit.
        """
        return sys.modules[type(self.attention(layer)).__module__].apply_rotary_pos_emb

    def rotate_keys(
        self,
        layer: int,
        k: Float[Tensor, "batch n_kv_heads n d_head"],
        cos: Float[Tensor, "batch n d_head"],
        sin: Float[Tensor, "batch n d_head"],
    ) -> Float[Tensor, "batch n_kv_heads n d_head"]:
        """``k`` rotated by RoPE ``(cos, sin)`` as ``layer``'s attention rotates its keys."""
        return self.rotary_fn(layer)(k, k, cos, sin)[1]

    def rotations(
        self, x: Tensor, position_ids: Int[Tensor, "... batch n"]
    ) -> list[tuple[Float[Tensor, "batch n d_head"], Float[Tensor, "batch n d_head"]]]:
        """RoPE ``(cos, sin)`` of every decoder layer at ``position_ids`` (all layers share one
        rotary embedding unless a family overrides this); ``x`` gives dtype and device."""
        rotary = _unwrapped(self.decoder.rotary_emb)
        return [rotary(x, position_ids)] * int(self.decoder_config.num_hidden_layers)

    # ------------------------------------------------------------------ engine
    def attention_refusals(self, n_tokens: int) -> list[str]:
        """What a ``n_tokens`` prompt needs of attention that tl-lvlm's own attention code
        (the engine's suffix attention, the recomputed-attention hooks) does not implement:
        a sliding window shorter than the prompt, attention-logit softcapping. Empty when
        it implements everything; the one list both refusals read."""
        cfg = self.decoder_config
        window = getattr(cfg, "sliding_window", None)
        reasons = []
        if window is not None and getattr(cfg, "use_sliding_window", True) and n_tokens > window:
            reasons.append(
                f"the prompt has {n_tokens} tokens, more than the sliding attention window "
                f"({window})"
            )
        if getattr(cfg, "attn_logit_softcapping", None) is not None:
            reasons.append("this checkpoint sets attn_logit_softcapping")
        return reasons

    def check_engine(self, n_tokens: int) -> None:
        """Refuse what the engine's suffix attention does not implement (it never guesses).

        Raises:
            NotImplementedError: the family refuses the engine, or
                :meth:`attention_refusals` names something.
        """
        self.require("engine")
        reasons = self.attention_refusals(n_tokens)
        if reasons:
            raise NotImplementedError(
                f"{self.name}: {'; '.join(reasons)}, which the engine's suffix attention does "
                "not apply; use scope='all' (hook reference) or a shorter prompt"
            )

    def prefix_inputs(self, sample: LVLMInputs, end: int) -> dict[str, Tensor]:
        """Forward kwargs (images included) for the engine's run of the unpadded prompt's first
        ``end`` tokens, besides ``input_ids`` and ``position_ids``.

        ``sample`` is one row: its :meth:`model_kwargs` without the attention mask (the
        run is unpadded), the :attr:`sequence_inputs` cut like the tokens.
        """
        pad = sample.padding(0)
        kwargs = self.model_kwargs(sample)
        del kwargs["attention_mask"], kwargs["position_ids"]
        for name in self.sequence_inputs:
            kwargs[name] = kwargs[name][:, pad : pad + end]
        return kwargs

    # --------------------------------------------------------------- knockout
    def check_knockout(self, bridge, layers: Sequence[int]) -> None:
        """Raise ``NotImplementedError`` where edits to ``hook_attn_scores`` are discarded.

        The plain ``AttentionBridge`` runs the wrapped HF attention module and fires
        ``hook_attn_scores`` afterwards, on its *post*-softmax weights; subclasses
        that reimplement ``forward`` (``PositionEmbeddingsAttentionBridge``, ...)
        compute the scores themselves and feed hook edits into the softmax.
        """
        from transformer_lens.model_bridge.generalized_components.attention import (
            AttentionBridge,
        )

        self.require("knockout")
        other = {
            layer: kind for layer, kind in self.non_softmax_layers().items() if layer in layers
        }
        if other:
            raise NotImplementedError(
                f"{self.name}: knockout blocks softmax attention between positions, and decoder "
                f"layers {sorted(other)} are {' / '.join(sorted(set(other.values())))}; choose "
                f"among the softmax layers {self.softmax_layers()}"
            )
        if self.attention_edits == "recompute":
            return  # the knockout hooks recompute attention: any attention bridge will do
        for layer in layers:
            attn = bridge.blocks[layer].attn
            if type(attn).forward is AttentionBridge.forward:
                raise NotImplementedError(
                    f"{self.name}: blocks.{layer}.attn is a {type(attn).__name__} that runs the "
                    "Hugging Face attention module natively and fires hook_attn_scores after the "
                    "fact, so attention knockout through that hook would silently do nothing. "
                    "Knockout needs an attention bridge that recomputes attention "
                    "(e.g. PositionEmbeddingsAttentionBridge, as on LLaVA)."
                )

    # ---------------------------------------------------------- image geometry
    def patch_geometry(self, processor, sample: LVLMInputs) -> PatchGeometry:
        """How ``sample``'s image tokens lie on its image (for image-token maps, object masks).

        The base class knows no layout; families that lay one image out on one grid
        override it.

        Raises:
            NotImplementedError: the family's layout is not one grid of one image region.
        """
        self.require("image_attribution")
        raise NotImplementedError(
            f"{self.name} does not define its image tokens' patch geometry, so image-token "
            "maps and object masks cannot be placed on the image"
        )
