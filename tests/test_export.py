"""Tests for Chapter 13's export: torch.export and ONNX (onnxruntime) of the GPT with its KV cache as
explicit inputs/outputs, and of a BERT sentence classifier — outputs equal ours to 1e-4 at shapes
other than the traced ones (dynamic batch, length and cache length)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scratchlm.decoding import generate, left_pad
from scratchlm.heads import SequenceClassifier
from scratchlm.layers import KVCache
from scratchlm.models import GPT, BertConfig, BertModel, GPTConfig
from scratchlm.serve import (
    GPTWithCache,
    OnnxClassifier,
    OnnxGPT,
    cache_names,
    export_classifier,
    export_gpt,
    gpt_onnx_names,
    to_onnx,
)

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def gpt() -> GPT:
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=53, block_size=32, n_layers=2, n_heads=2, d_model=32)).eval()
    with torch.no_grad():
        m.transformer.wte.weight.mul_(20)
    return m


@pytest.fixture(scope="module")
def gpt_export(gpt, tmp_path_factory):
    program = export_gpt(gpt, logits_to_keep=0)
    path = to_onnx(program, tmp_path_factory.mktemp("onnx") / "gpt.onnx", *gpt_onnx_names(2))
    return program, OnnxGPT(path, n_layers=2, n_heads=2, head_dim=16, threads=1)


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(1)
    bert = BertModel(BertConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_positions=32))
    return SequenceClassifier(bert, 32, 3, pooling="mean").eval()


def test_cache_names_and_the_empty_past():
    assert cache_names(2, "past") == ["past.0.key", "past.0.value", "past.1.key", "past.1.value"]
    assert gpt_onnx_names(1) == (["input_ids", "attention_mask", "past.0.key", "past.0.value"],
                                 ["logits", "present.0.key", "present.0.value"])


def test_the_explicit_cache_wrapper_equals_the_model_with_a_kvcache(gpt):
    wrapper = GPTWithCache(gpt)
    ids, mask = left_pad([[1, 2, 3, 4], [5, 6]], pad_id=0)
    with torch.no_grad():
        logits, *present = wrapper(ids, mask, *wrapper.empty_past(2))
        ref = gpt(ids, attention_mask=mask, use_cache=True)
        torch.testing.assert_close(logits, ref.logits)
        for i in range(2):
            torch.testing.assert_close(present[2 * i], ref.past_key_values.layers[i][0])
        with pytest.raises(ValueError, match="4 past tensors"):
            wrapper(ids, mask, *present[:2])


def _step_inputs(gpt, B: int, P: int, T: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 53, (B, P + T), generator=g)
    mask = torch.ones(B, P + T, dtype=torch.long)
    mask[0, : min(2, P + T - 1)] = 0  # left padding in row 0
    with torch.no_grad():
        cache = KVCache()
        if P:
            gpt(ids[:, :P], attention_mask=mask[:, :P], past_key_values=cache, use_cache=True)
        past = [t for i in range(2) for t in cache.layers[i]] if P else GPTWithCache(gpt).empty_past(B)
        ref = gpt(ids[:, P:], attention_mask=mask, past_key_values=cache, use_cache=True)
    return ids[:, P:], mask, past, ref


@pytest.mark.parametrize("B, P, T", [(1, 0, 5), (1, 0, 1), (3, 0, 1), (2, 6, 1), (1, 1, 1), (4, 3, 4)])
def test_torch_export_and_onnxruntime_equal_ours_at_new_shapes(gpt, gpt_export, B, P, T):
    program, onnx_gpt = gpt_export
    ids, mask, past, ref = _step_inputs(gpt, B, P, T, seed=B + P + T)
    with torch.no_grad():  # conservative size-1 guards off (see export_gpt); the ranges are still checked
        exported = program.module(check_guards=False)(ids, mask, *past)
    torch.testing.assert_close(exported[0], ref.logits, atol=1e-5, rtol=1e-5)
    logits, present = onnx_gpt(ids.numpy(), mask.numpy(), [p.numpy() for p in past])
    np.testing.assert_allclose(logits, ref.logits.numpy(), atol=1e-4, rtol=0)
    for i in range(2):
        k, v = ref.past_key_values.layers[i]
        np.testing.assert_allclose(present[2 * i], k.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(present[2 * i + 1], v.numpy(), atol=1e-4, rtol=0)
        assert present[2 * i].shape == (B, 2, P + T, 16)


def test_onnx_greedy_generation_through_the_explicit_cache_gives_our_tokens(gpt, gpt_export):
    _, onnx_gpt = gpt_export
    ids, mask = left_pad([[3, 14, 15, 9, 2], [5, 3], [35, 8, 9]], pad_id=0)
    ours = generate(gpt, ids, 12, attention_mask=mask, greedy=True)
    theirs = onnx_gpt.generate(ids.numpy(), 12, mask.numpy())
    assert np.array_equal(theirs, ours.numpy())


def test_the_classifier_exports_with_dynamic_batch_and_length(classifier, tmp_path):
    program = export_classifier(classifier, vocab_size=40)
    onnx_clf = OnnxClassifier(to_onnx(program, tmp_path / "clf.onnx", ["input_ids", "attention_mask"], ["logits"]),
                              threads=1)
    for B, T in [(1, 3), (4, 9)]:
        ids = torch.randint(4, 40, (B, T), generator=torch.Generator().manual_seed(T))
        mask = torch.ones_like(ids)
        mask[-1, T // 2:] = 0  # right padding in the last row
        with torch.no_grad():
            ref = classifier(ids, attention_mask=mask).logits
            torch.testing.assert_close(program.module(check_guards=False)(ids, mask), ref, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(onnx_clf(ids.numpy(), mask.numpy()), ref.numpy(), atol=1e-4, rtol=0)


def test_the_exported_program_checks_the_ranges_of_its_sizes(gpt_export):
    program, _ = gpt_export
    ids = torch.ones(1, 40, dtype=torch.long)  # 40 positions > block_size 32
    empty = [torch.zeros(1, 2, 0, 16)] * 4
    with pytest.raises(RuntimeError, match="<= 32"):
        program.module(check_guards=False)(ids, torch.ones_like(ids), *empty)


def test_export_rejects_a_model_too_short_to_trace():
    tiny = GPT(GPTConfig(vocab_size=10, block_size=4, n_layers=1, n_heads=1, d_model=8))
    with pytest.raises(ValueError, match="block_size"):
        export_gpt(tiny)
