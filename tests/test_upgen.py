"""The masked vision-language transformer and its objective, one sentence of the paper per test."""
import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import upgen
import vocab
from upgen import IMAGE_ONLY, PAIRED, TEXT_ONLY

TINY = upgen.UPGenConfig(image_codes=16, image_tokens=8, text_vocab=12, text_tokens=6,
                         width=32, depth=2, heads=4, mlp=64)
PAPER = dataclasses.replace(TINY, **upgen.PAPER_OBJECTIVE)  # the paper's objective, as --paper-objective


def random_sequences(cfg, kinds, text_lengths, *, seed=0):
    """Token sequences (B, L) of the given kinds, each caption with the given number of real tokens."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, cfg.image_codes, (len(kinds), cfg.image_tokens))
    texts = rng.integers(2, cfg.text_vocab, (len(kinds), cfg.text_tokens))  # 0, 1 are PAD, MASK
    texts[np.arange(cfg.text_tokens)[None, :] >= np.asarray(text_lengths)[:, None]] = vocab.PAD
    tokens = np.array(upgen.make_sequence(jnp.asarray(images), jnp.asarray(texts), cfg))
    kinds = np.asarray(kinds, np.int32)
    tokens[kinds == IMAGE_ONLY, cfg.image_tokens:] = cfg.pad_id
    tokens[kinds == TEXT_ONLY, :cfg.image_tokens] = cfg.pad_id
    return jnp.asarray(tokens), jnp.asarray(kinds)


def test_sequence_is_image_tokens_then_offset_text_tokens_with_pad_for_a_missing_modality():
    image, text = jnp.arange(8)[None], jnp.array([[5, 3, 0, 0, 0, 0]])
    assert upgen.make_sequence(image, text, TINY).tolist() == [[*range(8), 21, 19, 16, 16, 16, 16]]
    assert upgen.make_sequence(None, text, TINY)[0, :8].tolist() == [TINY.pad_id] * 8
    assert upgen.make_sequence(image, None, TINY)[0, 8:].tolist() == [TINY.pad_id] * 6
    with pytest.raises(ValueError, match="image tokens"):
        upgen.make_sequence(jnp.zeros((1, 5), jnp.int32), text, TINY)


def test_paired_mask_ratio_is_drawn_uniformly_in_0_1():
    n = 4000
    tokens, kinds = random_sequences(PAPER, [PAIRED] * n, [PAPER.text_tokens] * n)
    _, masked = upgen.mask_tokens(tokens, kinds, PAPER, key=jax.random.key(0))
    fraction = np.asarray(masked.mean(axis=1))
    assert abs(fraction.mean() - 0.5) < 0.02  # the mean of U(0, 1]
    assert abs((fraction <= 0.25).mean() - 0.25) < 0.03  # spread evenly, not piled at 0.5
    assert fraction.min() > 0 and fraction.max() == 1.0


def test_masking_modalities_apart_draws_independent_ratios_for_picture_and_caption():
    n = 4000
    tokens, kinds = random_sequences(TINY, [PAIRED] * n, [TINY.text_tokens] * n)
    hidden = {}
    for apart in (False, True):
        cfg = dataclasses.replace(TINY, mask_modalities_apart=apart, keep_whole=0.0)
        masked = np.asarray(upgen.mask_tokens(tokens, kinds, cfg, key=jax.random.key(5))[1])
        hidden[apart] = masked[:, :TINY.image_tokens].mean(1), masked[:, TINY.image_tokens:].mean(1)
    image, text = hidden[True]
    assert abs(image.mean() - 0.5) < 0.02 and abs(text.mean() - 0.5) < 0.02  # each still U(0, 1]
    assert abs(np.corrcoef(image, text)[0, 1]) < 0.05  # drawn apart: uncorrelated
    assert np.corrcoef(*hidden[False])[0, 1] > 0.5  # the paper's one ratio: strongly correlated
    # The start of text->image (whole picture hidden, caption untouched) is seen in training:
    start = lambda image, text: np.mean((image == 1) & (text == 0))
    assert start(*hidden[True]) > 0.003 and start(*hidden[False]) < 0.0005  # about 1/16 * 1/12 and 1e-5


def test_a_share_of_paired_examples_shows_the_whole_caption_or_the_whole_picture():
    n = 6000
    kinds = [PAIRED, IMAGE_ONLY, TEXT_ONLY] * (n // 3)
    tokens, kinds = random_sequences(TINY, kinds, [TINY.text_tokens] * n)
    masked = np.asarray(upgen.mask_tokens(tokens, kinds, TINY, key=jax.random.key(6))[1])
    image, text = masked[:, :TINY.image_tokens].any(1), masked[:, TINY.image_tokens:].any(1)
    kinds = np.asarray(kinds)
    paired = kinds == PAIRED
    # keep_whole 2/3: a third of paired examples hide no caption word, a third no picture token, a third draw both
    # ratios, which hide no word of 6 1/12 of the time and no token of 8 1/16 (floor(ratio * n + uniform) is 0)
    k = TINY.keep_whole
    assert abs(np.mean(image[paired] & ~text[paired]) - (k / 2 + (1 - k) / 12)) < 0.035
    assert abs(np.mean(text[paired] & ~image[paired]) - (k / 2 + (1 - k) / 16)) < 0.035
    assert abs(np.mean(image[paired] & text[paired]) - (1 - k) * (11 / 12) * (15 / 16)) < 0.035
    assert image[kinds == IMAGE_ONLY].all()  # image-only and text-only examples draw as before
    assert np.mean(masked[kinds == TEXT_ONLY, TINY.image_tokens:]) < 0.3


def test_unpaired_text_is_masked_at_15_percent():
    # Captions of 10 words, as in the shapes world (below 7 words, "at least one" takes over from 15%).
    n, cfg = 4000, dataclasses.replace(TINY, text_tokens=16)
    tokens, kinds = random_sequences(cfg, [TEXT_ONLY] * n, [10] * n)
    _, masked = upgen.mask_tokens(tokens, kinds, cfg, key=jax.random.key(1))
    fraction = np.asarray(masked.sum(axis=1) / 10)
    standard_error = fraction.std() / np.sqrt(n)
    assert abs(fraction.mean() - 0.15) < 4 * standard_error


@pytest.mark.parametrize("apart", [False, True])
def test_pad_is_never_masked_and_every_example_has_a_masked_token(apart):
    n, cfg = 600, dataclasses.replace(TINY, mask_modalities_apart=apart, keep_whole=2 / 3 if apart else 0.0)
    kinds = [PAIRED, IMAGE_ONLY, TEXT_ONLY] * (n // 3)
    lengths = np.random.default_rng(2).integers(1, TINY.text_tokens + 1, n)  # captions of 1..6 tokens
    tokens, kinds = random_sequences(TINY, kinds, lengths)
    inputs, masked = upgen.mask_tokens(tokens, kinds, cfg, key=jax.random.key(2))
    pad = tokens == TINY.pad_id
    assert not (masked & pad).any()
    assert (masked.sum(axis=1) >= 1).all()
    assert (inputs == jnp.where(masked, TINY.mask_id, tokens)).all()  # [MASK] replaces exactly the chosen


def test_the_same_key_gives_the_same_mask():
    tokens, kinds = random_sequences(TINY, [PAIRED, IMAGE_ONLY, TEXT_ONLY] * 10, [4] * 30)
    first = upgen.mask_tokens(tokens, kinds, TINY, key=jax.random.key(3))[1]
    again = upgen.mask_tokens(tokens, kinds, TINY, key=jax.random.key(3))[1]
    other = upgen.mask_tokens(tokens, kinds, TINY, key=jax.random.key(4))[1]
    assert (first == again).all() and (first != other).any()


def one_paired_example():
    """A paired example with 2 masked image tokens and 2 masked caption tokens, and zero logits."""
    tokens, kinds = random_sequences(TINY, [PAIRED], [4])
    masked = jnp.zeros_like(tokens, bool).at[0, jnp.array([1, 5, 8, 10])].set(True)
    logits = jnp.zeros((1, TINY.seq_len, TINY.vocab_size))
    return logits, tokens, masked, kinds


def test_unmasked_text_logits_do_not_change_the_loss():
    logits, tokens, masked, kinds = one_paired_example()
    loss = upgen.masked_loss(logits, tokens, masked, kinds, TINY)[0]
    changed = logits.at[0, 9].set(jax.random.normal(jax.random.key(5), (TINY.vocab_size,)))  # unmasked text
    assert upgen.masked_loss(changed, tokens, masked, kinds, TINY)[0] == loss
    changed = logits.at[0, 8].set(jax.random.normal(jax.random.key(5), (TINY.vocab_size,)))  # masked text
    assert upgen.masked_loss(changed, tokens, masked, kinds, TINY)[0] != loss


def test_a_masked_image_token_pulls_10x_harder_than_a_masked_caption_token():  # the paper's weights
    logits, tokens, masked, kinds = one_paired_example()
    grad = jax.grad(lambda l: upgen.masked_loss(l, tokens, masked, kinds, PAPER)[0])(logits)
    image_pull, text_pull = jnp.linalg.norm(grad[0, 1]), jnp.linalg.norm(grad[0, 8])
    assert np.isclose(image_pull / text_pull, 10.0, rtol=1e-5)
    # ...and 100x harder than a masked token of unpaired text.
    unpaired = jnp.array([TEXT_ONLY])
    grad = jax.grad(lambda l: upgen.masked_loss(l, tokens, masked, unpaired, PAPER)[0])(logits)
    assert np.isclose(image_pull / jnp.linalg.norm(grad[0, 8]), 100.0, rtol=1e-5)


def test_with_all_weights_1_the_loss_is_plain_masked_cross_entropy():
    cfg = dataclasses.replace(TINY, paired_text_weight=1.0, unpaired_text_weight=1.0)
    model = upgen.UPGen(cfg, key=jax.random.key(6))
    tokens, kinds = random_sequences(cfg, [PAIRED, IMAGE_ONLY, TEXT_ONLY] * 4, [3, 6, 5] * 4)
    loss, metrics = eqx.filter_jit(upgen.loss_fn)(model, tokens, kinds, key=jax.random.key(7))

    inputs, masked = upgen.mask_tokens(tokens, kinds, cfg, key=jax.random.key(7))
    logits = np.asarray(jax.vmap(model)(inputs), np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    b, i = np.nonzero(np.asarray(masked))
    by_hand = -log_probs[b, i, np.asarray(tokens)[b, i]]
    assert np.isclose(loss, np.mean(by_hand), rtol=1e-5)
    assert 0 <= metrics["image_acc"] <= 1 and 0 <= metrics["text_acc"] <= 1


def test_image_codes_the_tokenizer_puts_close_together_start_close_together():
    codebook = jax.random.normal(jax.random.key(0), (TINY.image_codes, 8))
    codebook = codebook.at[1].set(codebook[0] + 0.01)  # code 1 is all but code 0; the others lie apart
    plain = upgen.UPGen(TINY, key=jax.random.key(1))
    model = upgen.UPGen(TINY, key=jax.random.key(1), codebook=codebook)
    cosine = lambda a, b: float(a @ b / jnp.linalg.norm(a) / jnp.linalg.norm(b))  # noqa: E731
    for rows in (model.embed.weight, model.head.weight):  # as inputs and as outputs
        assert cosine(rows[0], rows[1]) > 0.7
        assert max(abs(cosine(rows[0], rows[k])) for k in range(2, TINY.image_codes)) < cosine(rows[0], rows[1])
    for name in ("embed", "head"):  # the rows of the words start as they would without a codebook
        np.testing.assert_array_equal(getattr(model, name).weight[TINY.image_codes:],
                                      getattr(plain, name).weight[TINY.image_codes:])
    assert np.allclose(model.embed.weight[:TINY.image_codes].std(), plain.embed.weight.std(), rtol=0.3)


def test_the_model_knows_where_each_token_is():
    # Without position embeddings a transformer is permutation-equivariant: swapping two input tokens
    # would just swap their outputs. The sinusoidal embeddings break that.
    model = upgen.UPGen(TINY, key=jax.random.key(8))
    tokens = random_sequences(TINY, [PAIRED], [6])[0][0]
    tokens = tokens.at[2].set(3).at[5].set(11)
    swap = jnp.arange(TINY.seq_len).at[2].set(5).at[5].set(2)
    assert not jnp.allclose(model(tokens[swap]), model(tokens)[swap], atol=1e-3)


def test_pad_tokens_do_not_change_the_outputs_at_real_positions():
    model = upgen.UPGen(TINY, key=jax.random.key(9))
    pad_moved = eqx.tree_at(lambda m: m.embed.weight, model,
                            model.embed.weight.at[TINY.pad_id].set(jax.random.normal(jax.random.key(1), (TINY.width,))))
    # (a different [PAD] embedding)
    tokens, _ = random_sequences(TINY, [PAIRED, IMAGE_ONLY, TEXT_ONLY], [2, 6, 4])
    real = tokens != TINY.pad_id
    before, after = jax.vmap(model)(tokens), jax.vmap(pad_moved)(tokens)
    assert jnp.allclose(before[real], after[real], atol=1e-5)
    assert not jnp.allclose(before[~real], after[~real], atol=1e-3)  # the change did reach the PAD slots


def test_hidden_states_of_every_layer_come_with_the_logits():
    model = upgen.UPGen(TINY, key=jax.random.key(10))
    tokens = random_sequences(TINY, [PAIRED], [6])[0][0]
    logits, hiddens = model(tokens, hidden=True)
    assert logits.shape == (TINY.seq_len, TINY.vocab_size) and logits.dtype == jnp.float32
    assert hiddens.shape == (TINY.depth, TINY.seq_len, TINY.width)
    assert jnp.allclose(logits, model(tokens))
    assert not jnp.allclose(hiddens[0], hiddens[1])


def test_bfloat16_matmuls_keep_float32_parameters_and_logits_close_to_float32():
    model = upgen.UPGen(TINY, key=jax.random.key(11))
    bf16 = upgen.UPGen(dataclasses.replace(TINY, compute_dtype="bfloat16"), key=jax.random.key(11))
    tokens = random_sequences(TINY, [PAIRED], [6])[0][0]
    logits = bf16(tokens)
    assert logits.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(eqx.filter(bf16, eqx.is_inexact_array)))
    assert jnp.allclose(logits, model(tokens), atol=0.1) and not jnp.allclose(logits, model(tokens), atol=1e-6)


def test_vit_large_builds_abstractly_with_about_300m_transformer_parameters():
    model = eqx.filter_eval_shape(upgen.UPGen, upgen.VIT_L, key=jax.random.key(0))
    blocks = upgen.count_params(model.blocks)
    assert 295e6 < blocks < 310e6  # ViT-L: 24 blocks of 12.6M
    assert upgen.count_params(model) > blocks
    assert model.blocks.fc1.weight.shape == (24, 4096, 1024)


def test_recomputing_each_blocks_activations_in_the_backward_pass_gives_the_same_loss_and_gradients():
    model = upgen.UPGen(TINY, key=jax.random.key(8))
    tokens, kinds = random_sequences(TINY, [PAIRED, IMAGE_ONLY, TEXT_ONLY, PAIRED], [3, 6, 5, 6])
    inputs, masked = upgen.mask_tokens(tokens, kinds, TINY, key=jax.random.key(9))

    def loss(model, remat):
        logits = jax.vmap(lambda seq: model(seq, remat=remat))(inputs)
        return upgen.masked_loss(logits, tokens, masked, kinds, TINY)[0]

    kept, recomputed = (eqx.filter_jit(eqx.filter_value_and_grad(loss))(model, remat) for remat in (False, True))
    np.testing.assert_allclose(kept[0], recomputed[0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(kept[1]), jax.tree.leaves(recomputed[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    program = str(jax.make_jaxpr(lambda m: eqx.filter_grad(loss)(m, True))(model))
    assert "remat" in program or "checkpoint" in program  # the blocks' forward pass is run again in the backward
