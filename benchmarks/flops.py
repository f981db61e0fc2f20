"""FLOPs of one ablated mask's suffix run, shared by ``ablation_throughput.py`` and
``gpu_check.py``: the standard count of a forward, and what the engine's fused path
executes of it."""

from __future__ import annotations

from dataclasses import dataclass

from tl_lvlm.ablation.engine import AblationEngine


@dataclass(frozen=True)
class TokenFlops:
    """Multiply-adds per suffix token and decoder layer (FLOPs are twice these)."""

    projections: int  # query, key, value, output
    mlp: int
    attention: int  # scores and weighted values over prefix + suffix
    suffix_len: int
    n_layers: int
    d_model: int
    vocab_size: int

    @classmethod
    def of(cls, engine: AblationEngine) -> TokenFlops:
        cfg = engine.model.hf_model.config.text_config
        d, n_heads, d_head = cfg.hidden_size, engine.model.n_heads, engine.model.d_head
        context = engine.prefix_len + engine.suffix_len
        return cls(
            projections=d * d_head * (2 * n_heads + 2 * engine.model.n_kv_heads),
            mlp=3 * d * cfg.intermediate_size,
            attention=2 * n_heads * d_head * context,
            suffix_len=engine.suffix_len,
            n_layers=cfg.num_hidden_layers,
            d_model=d,
            vocab_size=cfg.vocab_size,
        )


def suffix_flops_per_mask(engine: AblationEngine, n_layers: int | None = None) -> float:
    """Standard forward FLOPs of one mask's suffix tokens: projections, MLP, attention to
    prefix + suffix and the final position's unembedding, with ``n_layers`` decoder layers
    (default: the model's)."""
    t = TokenFlops.of(engine)
    per_layer = t.suffix_len * (t.projections + t.mlp + t.attention)
    return 2.0 * (n_layers or t.n_layers) * per_layer + 2.0 * t.d_model * t.vocab_size


def executed_flops_per_mask(engine: AblationEngine) -> float:
    """The FLOPs the fused path executes per mask, which skips part of the standard count.

    Layer 0 attends once for all masks, and with :attr:`AblationEngine.skips_first_layer`
    it runs no projections either (its attention output comes from a per-sample basis);
    the last layer attends and runs its MLP from the final query alone (its projections
    run on every suffix token); only the metric's logits are computed.
    """
    t = TokenFlops.of(engine)
    s, last = t.suffix_len, t.n_layers - 1
    total = 0
    for layer in range(t.n_layers):
        projected = 0 if layer == 0 and engine.skips_first_layer else s
        attending = 0 if layer == 0 else 1 if layer == last else s
        total += projected * t.projections + attending * t.attention
        total += (1 if layer == last else s) * t.mlp
    ids = engine.metric.vocab(engine.target, engine.foil)
    return 2.0 * total + 2.0 * t.d_model * (t.vocab_size if ids is None else len(ids))
