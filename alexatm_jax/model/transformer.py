"""The AlexaTM encoder-decoder in Flax linen, with the T5X module call signature.

``AlexaTMTransformer.encode`` / ``decode`` / ``__call__`` take the seqio feature names
(``encoder_input_tokens``, ``decoder_input_tokens``, ``decoder_target_tokens``, segment ids and positions of
packed examples). Segment id 0 marks padding. Without segment ids, padding is read from the tokens
(``pad_token_id``) on the encoder side; on the decoder side causal masking already keeps real tokens from
seeing the padding that follows them.

Layer structure (pre-LN, as the reference): encoder layer = x + Attn(LN(x)), then x + FFN(LN(x)); decoder
layer adds x + CrossAttn(LN(x), encoded) between the two; a final norm closes each stack. Encoder
embeddings are token + learned position + token type (row 0); decoder embeddings are token + learned
position at ``position + decoder_position_offset``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from alexatm_jax.model import layers as L
from alexatm_jax.model.config import ModelConfig

Array = jax.Array

_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    # Keep each attention block's output (tagged in layers.MultiHeadAttention) and recompute the rest.
    "save_attention_out": jax.checkpoint_policies.save_only_these_names("attention_out"),
}


class EncoderLayer(nn.Module):
    """[B, L, D] -> [B, L, D]; returns ``(x, None)`` so that it can be scanned over layers."""

    config: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, mask: Array):
        cfg = self.config
        dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        h = L.Norm(cfg, name="pre_attention_layer_norm")(x)
        h = L.MultiHeadAttention(cfg, deterministic=self.deterministic, name="attention")(h, h, mask)
        x = x + dropout(h, deterministic=self.deterministic)
        h = L.Norm(cfg, name="pre_mlp_layer_norm")(x)
        h = L.MlpBlock(cfg, cfg.encoder_ffn_dim, deterministic=self.deterministic, name="mlp")(h)
        x = x + dropout(h, deterministic=self.deterministic)
        return nn.with_logical_constraint(x, L.ACT_EMBED), None


class DecoderLayer(nn.Module):
    """[B, L, D] -> [B, L, D] with self-attention (cached when ``decode``) and cross-attention."""

    config: ModelConfig
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, x: Array, encoded: Optional[Array], self_mask: Array, cross_mask: Array):
        cfg = self.config
        dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        h = L.Norm(cfg, name="pre_self_attention_layer_norm")(x)
        h = L.MultiHeadAttention(cfg, deterministic=self.deterministic, decode=self.decode,
                                 name="self_attention")(h, None, self_mask)
        x = x + dropout(h, deterministic=self.deterministic)
        h = L.Norm(cfg, name="pre_cross_attention_layer_norm")(x)
        h = L.MultiHeadAttention(cfg, is_cross_attention=True, deterministic=self.deterministic,
                                 decode=self.decode, name="encoder_decoder_attention")(h, encoded, cross_mask)
        x = x + dropout(h, deterministic=self.deterministic)
        h = L.Norm(cfg, name="pre_mlp_layer_norm")(x)
        h = L.MlpBlock(cfg, cfg.decoder_ffn_dim, deterministic=self.deterministic, name="mlp")(h)
        x = x + dropout(h, deterministic=self.deterministic)
        return nn.with_logical_constraint(x, L.ACT_EMBED), None


def _layer_stack(config: ModelConfig, layer_cls, num_layers: int, num_args: int, **flags):
    """Applies ``num_layers`` layers: unrolled (``layers_0``...) or one scanned ``layers`` with a leading
    ``layers`` axis on every parameter and cache variable; each optionally rematerialised."""
    if config.remat_policy != "none":
        layer_cls = nn.remat(layer_cls, policy=_REMAT_POLICIES[config.remat_policy],
                             prevent_cse=not config.scan_layers)
    if config.scan_layers:
        scanned = nn.scan(
            layer_cls, variable_axes={"params": 0, "cache": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * num_args, length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"})
        stack = scanned(config, name="layers", **flags)

        def apply(x, *args):
            return stack(x, *args)[0]
        return apply

    layer_modules = [layer_cls(config, name=f"layers_{i}", **flags) for i in range(num_layers)]

    def apply_unrolled(x, *args):
        for layer in layer_modules:
            x, _ = layer(x, *args)
        return x
    return apply_unrolled


def default_positions(tokens: Array) -> Array:
    return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :], tokens.shape)


class Encoder(nn.Module):
    """Token ids [B, L] -> encoded [B, L, D]."""

    config: ModelConfig
    token_embedder: L.Embed

    @nn.compact
    def __call__(self, tokens: Array, segment_ids: Array, positions: Array, deterministic: bool) -> Array:
        cfg = self.config
        x = self.token_embedder(tokens)
        x = x + L.Embed(cfg.max_position_embeddings, cfg, table_axis="abspos",
                        name="position_embedder")(positions)
        x = x + L.Embed(cfg.type_vocab_size, cfg, table_axis="token_type",
                        name="token_type_embedder")(jnp.zeros_like(tokens))
        x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
        x = nn.with_logical_constraint(x, L.ACT_EMBED)
        mask = L.make_self_attention_mask(segment_ids, segment_ids, causal=False)
        x = _layer_stack(cfg, EncoderLayer, cfg.encoder_layers, 1, deterministic=deterministic)(x, mask)
        return L.Norm(cfg, name="encoder_norm")(x)


class Decoder(nn.Module):
    """Decoder ids [B, L] and encoded [B, S, D] -> logits [B, L, V] (float32)."""

    config: ModelConfig
    token_embedder: L.Embed
    output_embedder: Optional[L.Embed] = None  # set when the LM head is tied to the token table

    @nn.compact
    def __call__(self, encoded: Optional[Array], decoder_tokens: Array, encoder_segment_ids: Array,
                 decoder_segment_ids: Optional[Array], decoder_positions: Optional[Array],
                 deterministic: bool, decode: bool) -> Array:
        cfg = self.config
        batch, length = decoder_tokens.shape
        if decode:
            # Incremental decoding: positions continue from what the cache already holds.
            initialised = self.has_variable("cache", "position_index")
            index_var = self.variable("cache", "position_index", lambda: jnp.array(0, jnp.int32))
            start = index_var.value if initialised else jnp.array(0, jnp.int32)
            positions = start + jnp.arange(length, dtype=jnp.int32)[None, :]
            positions = jnp.broadcast_to(positions, (batch, length))
            if initialised:
                index_var.value = start + length
                max_len = self._cache_length()
                key_positions = jnp.arange(max_len, dtype=jnp.int32)[None, :]
                self_mask = key_positions[:, None, None, :] <= positions[:, None, :, None]
            else:
                self_mask = L.make_self_attention_mask(jnp.ones_like(decoder_tokens),
                                                       jnp.ones_like(decoder_tokens), causal=True)
            # One mask row per encoder row: beam search keeps the encoder once per example (see
            # layers._grouped_cross_attention), and every decoder row of an example sees the same keys.
            query_ones = jnp.ones((encoder_segment_ids.shape[0], length), jnp.int32)
            cross_mask = L.make_self_attention_mask(query_ones, encoder_segment_ids, causal=False)
        else:
            positions = default_positions(decoder_tokens) if decoder_positions is None else decoder_positions
            if decoder_segment_ids is None:
                query_segments = jnp.ones_like(decoder_tokens)
                self_mask = L.make_self_attention_mask(query_segments, query_segments, causal=True,
                                                       query_positions=None, key_positions=None)
                cross_query_segments = query_segments
                cross_key_segments = (encoder_segment_ids > 0).astype(jnp.int32)
            else:
                self_mask = L.make_self_attention_mask(decoder_segment_ids, decoder_segment_ids, causal=True)
                cross_query_segments, cross_key_segments = decoder_segment_ids, encoder_segment_ids
            cross_mask = L.make_self_attention_mask(cross_query_segments, cross_key_segments, causal=False)

        x = self.token_embedder(decoder_tokens)
        x = x + L.Embed(cfg.max_position_embeddings + cfg.decoder_position_offset, cfg, table_axis="abspos",
                        name="position_embedder")(positions + cfg.decoder_position_offset)
        x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
        x = nn.with_logical_constraint(x, L.ACT_EMBED)
        x = _layer_stack(cfg, DecoderLayer, cfg.decoder_layers, 3, deterministic=deterministic,
                         decode=decode)(x, encoded, self_mask, cross_mask)
        x = L.Norm(cfg, name="decoder_norm")(x)

        if self.output_embedder is not None:
            logits = self.output_embedder.attend(x)
        else:
            logits = L.Dense(cfg, (cfg.vocab_size,), ("embed", "vocab"), None, name="logits_dense")(x)
        logits = logits.astype(jnp.float32)
        if cfg.use_final_logits_bias:
            bias = self.param("final_logits_bias", L.zeros_init(("vocab",)), (cfg.vocab_size,),
                              L.dtype_of(cfg.param_dtype))
            logits = logits + bias.astype(jnp.float32)
        return nn.with_logical_constraint(logits, L.ACT_VOCAB)

    def _cache_length(self) -> int:
        """Length of the self-attention KV cache (the decode buffer), read from the first layer's cache
        (values are stored [..., B, H, max_len, K])."""
        cache = self.scope.variables()["cache"]
        layers = cache["layers"] if "layers" in cache else cache["layers_0"]
        return layers["self_attention"]["cached_value"].shape[-2]


class AlexaTMTransformer(nn.Module):
    """The encoder-decoder. Parameter tree (unscanned): ``encoder_token_embedder``,
    ``decoder_token_embedder`` (unless shared), ``encoder/{position_embedder, token_type_embedder,
    layers_i, encoder_norm}``, ``decoder/{position_embedder, layers_i, decoder_norm, logits_dense,
    final_logits_bias}``; scanned: ``layers`` with a leading ``layers`` axis instead of ``layers_i``."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.encoder_token_embedder = L.Embed(cfg.vocab_size, cfg)
        if cfg.share_embeddings:
            self.decoder_token_embedder = self.encoder_token_embedder
        else:
            self.decoder_token_embedder = L.Embed(cfg.vocab_size, cfg)
        output_embedder = self.decoder_token_embedder if cfg.tie_word_embeddings else None
        self.encoder = Encoder(cfg, token_embedder=self.encoder_token_embedder)
        self.decoder = Decoder(cfg, token_embedder=self.decoder_token_embedder, output_embedder=output_embedder)

    def _encoder_segments(self, encoder_input_tokens, encoder_segment_ids):
        if encoder_segment_ids is not None:
            return encoder_segment_ids
        return (encoder_input_tokens != self.config.pad_token_id).astype(jnp.int32)

    def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Optional[Array] = None,
               encoder_positions: Optional[Array] = None, enable_dropout: bool = True) -> Array:
        """encoder_input_tokens [B, S] int -> encoded [B, S, D] (logical axes batch, length, embed)."""
        self._check_length(encoder_input_tokens, "encoder_input_tokens", 0)
        segments = self._encoder_segments(encoder_input_tokens, encoder_segment_ids)
        positions = default_positions(encoder_input_tokens) if encoder_positions is None else encoder_positions
        return self.encoder(encoder_input_tokens, segments, positions, deterministic=not enable_dropout)

    def decode(self, encoded: Optional[Array], encoder_input_tokens: Optional[Array],
               decoder_input_tokens: Array, decoder_target_tokens: Optional[Array] = None,
               encoder_segment_ids: Optional[Array] = None, decoder_segment_ids: Optional[Array] = None,
               decoder_positions: Optional[Array] = None, enable_dropout: bool = True,
               decode: bool = False, max_decode_length: Optional[int] = None) -> Array:
        """Decoder ids [B, L] attending to encoded [B, S, D] -> logits [B, L, V] float32.

        ``decode=True`` runs incrementally against the 'cache' collection: the first call after the cache
        is created must pass ``encoded`` (cross-attention keys/values are computed then and cached); later
        calls may pass ``encoded=None``. ``decoder_target_tokens`` is accepted for T5X compatibility; loss
        weights are the caller's business.
        """
        del decoder_target_tokens, max_decode_length
        self._check_length(decoder_input_tokens, "decoder_input_tokens", 0)
        if encoder_input_tokens is None and encoder_segment_ids is None:
            raise ValueError("decode() needs encoder_input_tokens or encoder_segment_ids for the cross mask")
        segments = self._encoder_segments(encoder_input_tokens, encoder_segment_ids)
        return self.decoder(encoded, decoder_input_tokens, segments, decoder_segment_ids, decoder_positions,
                            deterministic=not enable_dropout, decode=decode)

    def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
                 decoder_target_tokens: Optional[Array] = None, encoder_segment_ids: Optional[Array] = None,
                 decoder_segment_ids: Optional[Array] = None, encoder_positions: Optional[Array] = None,
                 decoder_positions: Optional[Array] = None, *, enable_dropout: bool = True,
                 decode: bool = False, max_decode_length: Optional[int] = None) -> Array:
        """Teacher-forced forward pass: logits [B, L, V] float32."""
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions, enable_dropout)
        return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                           encoder_segment_ids, decoder_segment_ids, decoder_positions, enable_dropout,
                           decode, max_decode_length)

    def _check_length(self, tokens: Array, name: str, extra: int):
        limit = self.config.max_position_embeddings
        if tokens.ndim != 2:
            raise ValueError(f"{name} must be [batch, length], got shape {tokens.shape}")
        if tokens.shape[1] + extra > limit:
            raise ValueError(
                f"{name} has length {tokens.shape[1]} but the model has {limit} positions "
                f"(max_position_embeddings); truncate the input or use a model with more positions.")
