"""Chapter 09 freezing strategies: which parameters train, lr per group, gradual unfreezing in train()."""

from __future__ import annotations

import pytest
import torch

from scratchlm.finetune import STRATEGIES, configure_finetuning, encoder_blocks
from scratchlm.heads import SequenceClassifier
from scratchlm.models import GPT, BertConfig, BertModel, GPTConfig
from scratchlm.training import TrainConfig, adamw_from_param_groups, build_optimizer, train

L = 4


def bert_head(seed: int = 0) -> SequenceClassifier:
    torch.manual_seed(seed)
    enc = BertModel(BertConfig(vocab_size=50, d_model=16, n_layers=L, n_heads=2, d_ff=32, max_positions=32))
    return SequenceClassifier(enc, 16, 3, pooling="pooler")  # the pooler is used, so it learns


def gpt_head(seed: int = 0) -> SequenceClassifier:
    torch.manual_seed(seed)
    enc = GPT(GPTConfig(vocab_size=50, block_size=32, n_layers=L, n_heads=2, d_model=16))
    return SequenceClassifier(enc, 16, 3, pooling="last")


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def all_names(model) -> set[str]:
    return {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("make", [bert_head, gpt_head])
def test_blocks_partition_the_encoder(make):
    model = make()
    blocks = encoder_blocks(model.encoder)
    assert len(blocks.layers) == L
    ids = [id(p) for m in blocks.embeddings + blocks.layers + blocks.top for p in m.parameters()]
    assert set(ids) == {id(p) for p in model.encoder.parameters()}


def test_strategies_on_bert_which_parameters_train():
    head = {"classifier.weight", "classifier.bias"}
    pooler = {"encoder.pooler.dense.weight", "encoder.pooler.dense.bias"}

    def layer(i):
        return {n for n in all_names(bert_head()) if n.startswith(f"encoder.encoder.layers.{i}.")}

    model = bert_head()
    plan = configure_finetuning(model, "linear_probe")
    assert trainable_names(model) == head
    assert plan.trainable_parameters() == 16 * 3 + 3
    model = bert_head()
    configure_finetuning(model, "top_k", k=2)
    assert trainable_names(model) == head | pooler | layer(3) | layer(2)
    model = bert_head()
    configure_finetuning(model, "top_k", k=0)
    assert trainable_names(model) == head | pooler
    assert layer(0)  # the helper finds names
    for strategy in ("full", "llrd"):
        model = bert_head()
        plan = configure_finetuning(model, strategy)
        assert trainable_names(model) == all_names(model)
        assert plan.trainable_parameters() == sum(p.numel() for p in model.parameters())


def test_llrd_learning_rate_per_group():
    model = bert_head()
    plan = configure_finetuning(model, "llrd", lr_decay=0.5)
    scales = {g["name"]: g["lr_scale"] for g in plan.param_groups}
    assert scales == {"head": 1.0, "top": 1.0, "layer 3": 0.5, "layer 2": 0.25, "layer 1": 0.125, "layer 0": 0.0625,
                      "embeddings": 0.03125}
    opt = adamw_from_param_groups(plan.param_groups, learning_rate=1e-3, weight_decay=0.1, betas=(0.9, 0.999))
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["layer 1"]["lr"] == pytest.approx(1e-3 * 0.125)
    assert by_name["layer 1"]["weight_decay"] == 0.1 and by_name["layer 1 (no decay)"]["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in by_name["embeddings"]["params"])
    assert all(p.dim() < 2 for p in by_name["embeddings (no decay)"]["params"])
    # every parameter exactly once
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_gpt_blocks_tied_embeddings_counted_once():
    model = gpt_head()
    plan = configure_finetuning(model, "llrd", lr_decay=0.9)
    ids = [id(p) for g in plan.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # lm_head is wte: once
    names = [g["name"] for g in plan.param_groups]
    assert names == ["head", "top", "layer 3", "layer 2", "layer 1", "layer 0", "embeddings"]
    model = gpt_head()
    configure_finetuning(model, "top_k", k=1)
    trained = trainable_names(model)
    assert {n for n in trained if ".h." in n} == {n for n in all_names(model) if n.startswith("encoder.transformer.h.3.")}
    assert "encoder.transformer.ln_f.weight" in trained and "encoder.transformer.wte.weight" not in trained


def test_gradual_unfreezing_schedule():
    model = bert_head()
    plan = configure_finetuning(model, "gradual", unfreeze_every=5)
    assert plan.schedule == [(0, 1), (5, 2), (10, 3), (15, 4), (20, 5), (25, 6)]
    assert [name for name, _ in plan._blocks] == ["head", "top + layer 3", "layer 2", "layer 1", "layer 0",
                                                  "embeddings"]
    head = {"classifier.weight", "classifier.bias"}
    assert trainable_names(model) == head
    plan.on_step(7)
    assert trainable_names(model) == head | {n for n in all_names(model)
                                             if n.startswith(("encoder.encoder.layers.3.", "encoder.pooler."))}
    plan.on_step(100)
    assert trainable_names(model) == all_names(model)
    plan.on_step(0)  # a pure function of the step: back to the start (a resume lands right)
    assert trainable_names(model) == head
    # the optimizer holds every parameter from the start (AdamW skips those without a gradient)
    assert sum(len(g["params"]) for g in plan.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize("kwargs,match", [
    (dict(strategy="frozen"), "strategy must be one of"),
    (dict(strategy="top_k", k=L + 1), r"k must be an int in \[0, 4\]"),
    (dict(strategy="llrd", lr_decay=1.5), "lr_decay"),
    (dict(strategy="gradual", unfreeze_every=0), "unfreeze_every"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        configure_finetuning(bert_head(), **kwargs)


def test_unknown_model_and_bare_encoder():
    with pytest.raises(TypeError, match="knows BertModel"):
        configure_finetuning(torch.nn.Linear(3, 3), "full")
    enc = bert_head().encoder
    with pytest.raises(ValueError, match="leaves nothing to train"):
        configure_finetuning(enc, "linear_probe")  # a bare encoder has no head
    plan = configure_finetuning(enc, "top_k", k=1)
    assert trainable_names(enc) == {n for n in all_names(enc) if n.startswith(("pooler.", "encoder.layers.3."))}
    assert [g["name"] for g in plan.param_groups] == ["top", "layer 3"]


def test_adamw_from_param_groups_errors():
    p = torch.nn.Parameter(torch.zeros(2, 2))
    kw = dict(learning_rate=1e-3, weight_decay=0.0, betas=(0.9, 0.999))
    with pytest.raises(ValueError, match="two param_groups"):
        adamw_from_param_groups([{"params": [p]}, {"params": [p]}], **kw)
    with pytest.raises(ValueError, match="lr_scale"):
        adamw_from_param_groups([{"params": [p], "lr_scale": -1}], **kw)
    with pytest.raises(ValueError, match="non-empty list"):
        adamw_from_param_groups([], **kw)
    with pytest.raises(TypeError, match="nn.Parameter"):
        adamw_from_param_groups([{"params": [torch.zeros(2)]}], **kw)


def _batches(split: str, index: int):
    g = torch.Generator().manual_seed(index * 2 + (split == "val"))
    ids = torch.randint(1, 50, (4, 6), generator=g)  # (B, T)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids[:, 0] % 3}


def _loss(model, batch):
    return model(**batch).loss


def test_train_uses_lr_scale_and_freezing():
    model = bert_head()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = configure_finetuning(model, "top_k", k=1)
    cfg = TrainConfig(max_steps=3, learning_rate=1e-2, warmup_steps=0, eval_every=0, progress=False)
    train(model, _batches, _loss, cfg, **plan.train_kwargs())
    for n, p in model.named_parameters():
        changed = not torch.equal(p, before[n])
        assert changed == p.requires_grad, n
    # LLRD: the optimizer's lr per group follows lr(step) · scale
    model = bert_head()
    plan = configure_finetuning(model, "llrd", lr_decay=0.5)
    cfg = TrainConfig(max_steps=2, learning_rate=1e-2, min_lr=1e-2, warmup_steps=0, eval_every=0, progress=False)
    seen = []
    original = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append({g["name"]: g["lr"] for g in self.param_groups})
        return original(self, *a, **k)

    torch.optim.AdamW.step = spy
    try:
        train(model, _batches, _loss, cfg, **plan.train_kwargs())
    finally:
        torch.optim.AdamW.step = original
    assert seen[-1]["embeddings"] == pytest.approx(1e-2 * 0.5 ** (L + 1))
    assert seen[-1]["head"] == pytest.approx(1e-2)


def test_train_gradual_unfreezing_updates_blocks_in_turn():
    model = bert_head()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = configure_finetuning(model, "gradual", unfreeze_every=2)
    cfg = TrainConfig(max_steps=4, learning_rate=1e-2, warmup_steps=0, eval_every=0, progress=False, grad_clip=0.0)
    train(model, _batches, _loss, cfg, **plan.train_kwargs())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    # steps 0-1: the head; steps 2-3: also the pooler and layer 3 — nothing below was touched
    assert "encoder.pooler.dense.weight" in changed
    assert {n for n in changed if "layers." in n} == {n for n in all_names(model) if ".layers.3." in n}
    assert "encoder.embeddings.word_embeddings.weight" not in changed
    assert "classifier.weight" in changed


def test_build_optimizer_prefers_param_groups():
    model = bert_head()
    plan = configure_finetuning(model, "llrd")
    cfg = TrainConfig()
    opt = build_optimizer(model, cfg, plan.param_groups)
    assert {g["name"] for g in opt.param_groups} >= {"layer 0", "embeddings (no decay)"}
    assert len(STRATEGIES) == 5
