"""Muon and the Muon/AdamW split, checked against SVD, hand-written steps and torch.optim.AdamW."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from scratchlm.models.gpt import GPT, GPTConfig
from scratchlm.training import (
    CUBIC_COEFFICIENTS,
    QUINTIC_BAND,
    QUINTIC_COEFFICIENTS,
    Muon,
    MuonAdamW,
    build_muon_adamw,
    load_checkpoint,
    muon_update_scale,
    newton_schulz_orthogonalize,
    save_checkpoint,
    split_parameters,
)

LOW, HIGH = QUINTIC_BAND
TOL = 0.01  # float32 rounding on top of the band the polynomial guarantees


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, dtype=torch.float64, generator=gen))  # (rows, cols)
    return q


def _with_singular_values(m: int, n: int, s: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """U diag(s) Vᵀ with random orthonormal U (m, r), V (n, r); r = len(s)."""
    r = len(s)
    return _orthonormal(m, r, gen) @ torch.diag(s) @ _orthonormal(n, r, gen).T  # (m, n)


def _polar(G: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)  # (m, r), (r,), (r, n)
    return U @ Vh  # (m, n)


def _p(x: torch.Tensor, coeffs: tuple[float, float, float]) -> torch.Tensor:
    a, b, c = coeffs
    return a * x + b * x**3 + c * x**5


def _reference_ns(G: torch.Tensor, steps: int, coeffs=QUINTIC_COEFFICIENTS, eps: float = 1e-7) -> torch.Tensor:
    """The iteration done on the singular values of an SVD, in float64: U p^steps(Σ/(‖G‖_F + eps)) Vᵀ."""
    G = G.double()
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    s = S / (torch.linalg.matrix_norm(G) + eps)  # (r,)
    for _ in range(steps):
        s = _p(s, coeffs)
    return U @ torch.diag(s) @ Vh  # (m, n)


# ------------------------------------------------------------------ Newton–Schulz


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (100, 100), (1, 40), (40, 1)])
def test_quintic_band_well_conditioned(shape):
    gen = _gen(1)
    m, n = shape
    r = min(m, n)
    s = torch.linspace(1.0, 0.3, r, dtype=torch.float64)  # condition number 3.3
    G = _with_singular_values(m, n, s, gen).float()
    sv = torch.linalg.svdvals(newton_schulz_orthogonalize(G).double())  # (r,)
    assert sv.min() >= LOW - TOL and sv.max() <= HIGH + TOL, sv


@pytest.mark.parametrize("shape", [(128, 512), (512, 128), (96, 96)])
def test_quintic_band_ill_conditioned(shape):
    """Every σ with σ/‖G‖_F ≥ 0.002 ends in [0.8, 1.2] after 5 steps; here κ = σ_max/σ_min = 100."""
    gen = _gen(2)
    m, n = shape
    r = min(m, n)
    s = torch.logspace(0, -2, r, dtype=torch.float64)  # (r,) from 1 to 1/100
    G = _with_singular_values(m, n, s, gen)
    assert (s.min() / torch.linalg.matrix_norm(G)).item() > 0.002
    sv = torch.linalg.svdvals(newton_schulz_orthogonalize(G.float()).double())
    assert sv.min() >= LOW - TOL and sv.max() <= HIGH + TOL, (sv.min(), sv.max())


@pytest.mark.parametrize("shape", [(64, 200), (200, 64)])
def test_rank_deficient(shape):
    """Rank 10: ten singular values in the band, the rest stay at 0 (p(0) = 0)."""
    gen = _gen(3)
    m, n = shape
    G = torch.randn(m, 10, generator=gen) @ torch.randn(10, n, generator=gen)  # (m, n) rank 10
    sv = torch.linalg.svdvals(newton_schulz_orthogonalize(G).double())
    assert sv[:10].min() >= LOW - TOL and sv[:10].max() <= HIGH + TOL, sv[:10]
    assert sv[10:].max() < 1e-3


def test_cubic_with_many_steps_converges_to_one():
    gen = _gen(4)
    s = torch.linspace(1.0, 0.2, 32, dtype=torch.float64)
    G = _with_singular_values(48, 32, s, gen).float()
    out = newton_schulz_orthogonalize(G, steps=40, coefficients=CUBIC_COEFFICIENTS)
    sv = torch.linalg.svdvals(out.double())
    assert (sv - 1).abs().max() < 1e-3
    torch.testing.assert_close(out.double(), _polar(G), atol=1e-3, rtol=0)


@pytest.mark.parametrize("shape, min_cos", [((128, 512), 0.99), ((512, 128), 0.99), ((768, 256), 0.99),
                                            ((256, 256), 0.985)])
def test_close_to_exact_polar_factor(shape, min_cos):
    """Cosine similarity to U Vᵀ from the SVD. Square Gaussians have σ_min ≈ 0, so they score lower."""
    G = torch.randn(*shape, generator=_gen(5))
    out = newton_schulz_orthogonalize(G).double()
    polar = _polar(G)
    cos = (out * polar).sum() / (out.norm() * polar.norm())
    assert cos > min_cos, cos


def test_matches_the_iteration_on_singular_values():
    """Matrix products do to each σ exactly what p does (checked against an SVD, in float64)."""
    G = torch.randn(20, 33, dtype=torch.float64, generator=_gen(6))
    for steps in (1, 2, 5):
        out = newton_schulz_orthogonalize(G, steps=steps, dtype=torch.float64)
        torch.testing.assert_close(out, _reference_ns(G, steps), atol=1e-10, rtol=1e-10)


def test_scale_invariant_and_transpose_equivariant():
    G = torch.randn(40, 24, generator=_gen(7))
    base = newton_schulz_orthogonalize(G)
    for factor in (1e-3, 7.0, 1e4):
        torch.testing.assert_close(newton_schulz_orthogonalize(G * factor), base, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(newton_schulz_orthogonalize(G.T), base.T, atol=0, rtol=0)
    assert torch.equal(newton_schulz_orthogonalize(torch.zeros(3, 5)), torch.zeros(3, 5))


def test_batched_and_dtype():
    G = torch.randn(3, 16, 24, generator=_gen(8))
    out = newton_schulz_orthogonalize(G)
    for i in range(3):
        torch.testing.assert_close(out[i], newton_schulz_orthogonalize(G[i]), atol=1e-6, rtol=1e-5)
    low = newton_schulz_orthogonalize(G[0].bfloat16(), dtype=torch.bfloat16)
    assert low.dtype == torch.bfloat16
    assert (low.float() - out[0]).abs().max() < 0.1
    assert newton_schulz_orthogonalize(G[0].double()).dtype == torch.float64


def test_polynomial_claims_of_the_docstring():
    """The quintic keeps [0.8, 1.2], never overshoots 1.2, and lifts σ ≥ 0.002 into the band in 5 steps."""
    x = torch.linspace(0, HIGH, 240_001, dtype=torch.float64)
    y = _p(x, QUINTIC_COEFFICIENTS)
    assert y.max() <= HIGH + 1e-4
    assert y[x >= LOW].min() >= LOW - 1e-4
    assert (y[x <= LOW] >= x[x <= LOW] - 1e-12).all()
    z = torch.linspace(0.002, 1.0, 200_001, dtype=torch.float64)
    for _ in range(5):
        z = _p(z, QUINTIC_COEFFICIENTS)
    assert z.min() >= LOW - 1e-3 and z.max() <= HIGH + 1e-3
    a, b, c = CUBIC_COEFFICIENTS
    assert a + b + c == 1.0 and a + 3 * b + 5 * c == 0.0  # p(1) = 1, p'(1) = 0


def test_coefficients_solve_the_linear_programme():
    """Largest p'(0) with p ≤ 1.2 on [0, 1.2], p ≥ 0.8 on [0.8, 1.2], p(σ) ≥ σ on [0, 0.8]."""
    optimize = pytest.importorskip("scipy.optimize")
    s = np.linspace(0, HIGH, 4001)
    M = np.stack([s, s**3, s**5], axis=1)  # p(s) = M @ (a, b, c)
    band, low = s >= LOW, s <= LOW
    A = np.concatenate([M, -M[band], -M[low]])
    rhs = np.concatenate([np.full(len(s), HIGH), np.full(band.sum(), -LOW), -s[low]])
    result = optimize.linprog(c=[-1, 0, 0], A_ub=A, b_ub=rhs, bounds=[(None, None)] * 3)
    assert result.success
    np.testing.assert_allclose(result.x, QUINTIC_COEFFICIENTS, atol=2e-3)


def test_update_scale_equalises_output_rms():
    """E‖s·O x‖²/m = 1 for unit-RMS x, tall or wide (Monte Carlo against the docstring's formula)."""
    gen = _gen(9)
    for m, n in [(256, 64), (64, 256), (128, 128)]:
        ortho = _polar(torch.randn(m, n, generator=gen))  # (m, n)
        x = torch.randn(n, 4000, dtype=torch.float64, generator=gen)  # (n, N) unit-RMS inputs
        out = muon_update_scale(m, n) * (ortho @ x)  # (m, N)
        assert abs(out.pow(2).mean().sqrt().item() - 1.0) < 0.02
    assert muon_update_scale(512, 128) == 2.0 and muon_update_scale(128, 512) == 1.0


def test_newton_schulz_bad_inputs():
    with pytest.raises(TypeError, match="torch.Tensor"):
        newton_schulz_orthogonalize([[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        newton_schulz_orthogonalize(torch.ones(5))
    with pytest.raises(TypeError, match="floating-point"):
        newton_schulz_orthogonalize(torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="steps"):
        newton_schulz_orthogonalize(torch.ones(2, 2), steps=-1)
    with pytest.raises(ValueError, match=r"\(a, b, c\)"):
        newton_schulz_orthogonalize(torch.ones(2, 2), coefficients=(1.0, 2.0))


# ------------------------------------------------------------------ Muon


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_step_matches_hand_written(nesterov):
    """Two steps on a 3×2 matrix: momentum, (Nesterov), orthogonalise via SVD, √(3/2) scale, decay."""
    gen = _gen(10)
    w0 = torch.randn(3, 2, dtype=torch.float64, generator=gen)
    grads = [torch.randn(3, 2, dtype=torch.float64, generator=gen) for _ in range(2)]
    lr, mu, wd = 0.1, 0.9, 0.05
    p = nn.Parameter(w0.clone())
    opt = Muon([p], lr=lr, momentum=mu, nesterov=nesterov, weight_decay=wd, ns_dtype=torch.float64)
    w, buf = w0.clone(), torch.zeros(3, 2, dtype=torch.float64)
    for g in grads:
        p.grad = g.clone()
        opt.step()
        buf = mu * buf + g
        u = g + mu * buf if nesterov else buf
        w = w * (1 - lr * wd) - lr * (3 / 2) ** 0.5 * _reference_ns(u, 5)
        torch.testing.assert_close(p.detach(), w, atol=1e-10, rtol=1e-10)


def test_muon_skips_params_without_grad_and_returns_closure_loss():
    p, q = nn.Parameter(torch.ones(2, 3)), nn.Parameter(torch.ones(4, 4))
    opt = Muon([p, q], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 6.0
    assert torch.equal(q.detach(), torch.ones(4, 4)) and not torch.equal(p.detach(), torch.ones(2, 3))


def test_muon_reduces_a_least_squares_loss():
    gen = _gen(11)
    X, W_true = torch.randn(64, 256, generator=gen), torch.randn(32, 64, generator=gen) / 8
    Y = W_true @ X  # (32, 256)
    W = nn.Parameter(torch.zeros(32, 64))
    opt = Muon([W], lr=0.05)
    losses = []
    for step in range(100):
        opt.param_groups[0]["lr"] = 0.05 * (1 - step / 100)  # a constant lr would keep hopping around W_true
        loss = ((W @ X - Y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.01 * losses[0]


def test_muon_bad_inputs():
    with pytest.raises(ValueError, match=r"shape \(5,\).*1-D"):
        Muon([nn.Parameter(torch.ones(5))], lr=0.1)
    with pytest.raises(ValueError, match=r"'emb'.*shape \(2, 3, 4\)"):
        Muon([("emb", nn.Parameter(torch.ones(2, 3, 4)))], lr=0.1)
    good = [nn.Parameter(torch.ones(2, 2))]
    for kwargs, match in [({"lr": -1.0}, "lr"), ({"lr": 0.1, "momentum": 1.0}, "momentum"),
                          ({"lr": 0.1, "weight_decay": -0.1}, "weight_decay"), ({"lr": 0.1, "ns_steps": 0}, "ns_steps")]:
        with pytest.raises(ValueError, match=match):
            Muon(good, **kwargs)
    opt = Muon(good, lr=0.1)
    with pytest.raises(ValueError, match="2-D"):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(3))]})


def _train_steps(model, opt, steps, seed):
    gen = _gen(seed)
    for _ in range(steps):
        x = torch.randint(0, 50, (2, 8), generator=gen)  # (B, T)
        loss = model.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def test_muon_state_dict_round_trip():
    gen = _gen(12)
    X = torch.randn(6, 10, generator=gen)
    W = nn.Parameter(torch.randn(4, 6, generator=gen))
    opt = Muon([W], lr=0.05, weight_decay=0.01)

    def run(param, optimizer, n):
        for _ in range(n):
            optimizer.zero_grad()
            (param @ X).sin().sum().backward()
            optimizer.step()

    run(W, opt, 3)
    saved_w, saved_state = W.detach().clone(), copy.deepcopy(opt.state_dict())
    run(W, opt, 3)
    W2 = nn.Parameter(saved_w.clone())
    opt2 = Muon([W2], lr=0.05, weight_decay=0.01)
    opt2.load_state_dict(saved_state)
    run(W2, opt2, 3)
    assert torch.equal(W.detach(), W2.detach())


# ------------------------------------------------------------------ the split and MuonAdamW


class TinyLM(nn.Module):
    """GPT-2's parameter layout in miniature (tied head, wte/wpe, c_fc/c_proj, LayerNorms); no attention."""

    def __init__(self, vocab: int = 50, block: int = 8, width: int = 16, layers: int = 2) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, width), wpe=nn.Embedding(block, width),
            h=nn.ModuleList(nn.ModuleDict(dict(ln=nn.LayerNorm(width), c_fc=nn.Linear(width, 4 * width),
                                               c_proj=nn.Linear(4 * width, width))) for _ in range(layers)),
            ln_f=nn.LayerNorm(width)))
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def loss(self, idx: torch.Tensor) -> torch.Tensor:
        t = self.transformer
        x = t.wte(idx) + t.wpe(torch.arange(idx.size(1)))  # (B, T, C)
        for block in t.h:
            x = x + block.c_proj(torch.nn.functional.gelu(block.c_fc(block.ln(x))))  # (B, T, C)
        logits = self.lm_head(t.ln_f(x))  # (B, T, V)
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), idx[:, 1:].flatten())


def _lm(seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM()


def _gpt(**kwargs) -> GPT:
    return GPT(GPTConfig(vocab_size=50, block_size=8, n_layers=2, n_heads=2, d_model=16, **kwargs))


@pytest.mark.parametrize("make", [_lm, _gpt, lambda: _gpt(tie_embeddings=False, positions="rope")])
def test_split_puts_each_parameter_in_exactly_one_group(make):
    model = make()
    split = split_parameters(model)
    ids = [id(p) for group in split.values() for _, p in group]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    muon_names = {n for n, _ in split["muon"]}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.startswith("transformer.h."):
            assert f"{name}.weight" in muon_names
        if isinstance(module, nn.Embedding):
            assert all(p is not q for _, p in split["muon"] for q in module.parameters())
    assert all(p.ndim == 2 for _, p in split["muon"])
    assert all(p.ndim < 2 for _, p in split["adamw_no_decay"])
    tables = {n for n, p in model.named_parameters() if p.ndim == 2 and ("wte" in n or "wpe" in n or "lm_head" in n)}
    assert {n for n, _ in split["adamw_decay"]} == tables
    opt = build_muon_adamw(model)
    in_opts = [id(p) for group in opt.param_groups for p in group["params"]]
    assert sorted(in_opts) == sorted(ids)
    assert [g["name"] for g in opt.param_groups] == ["muon", "adamw_decay", "adamw_no_decay"]


def test_split_rules_by_module_name_and_predicate():
    model = nn.ModuleDict({"tokens": nn.Embedding(10, 4), "body": nn.Linear(4, 4), "lm_head": nn.Linear(4, 10),
                           "norm": nn.LayerNorm(4)})
    split = split_parameters(model)
    assert [n for n, _ in split["muon"]] == ["body.weight"]  # the Embedding by type, the head by name
    assert {n for n, _ in split["adamw_decay"]} == {"tokens.weight", "lm_head.weight"}
    custom = split_parameters(model, use_muon=lambda name, p: p.ndim == 2 and "tokens" not in name)
    assert {n for n, _ in custom["muon"]} == {"body.weight", "lm_head.weight"}
    with pytest.raises(ValueError, match=r"'body.bias' of shape \(4,\)"):
        split_parameters(model, use_muon=lambda name, p: name.startswith("body"))
    with pytest.raises(TypeError, match="nn.Module"):
        split_parameters([nn.Parameter(torch.ones(2, 2))])


def test_wrapper_equals_the_two_optimizers_and_applies_lr_scale():
    """One scheduled lr in every group: Muon runs at lr × muon_lr/adamw_lr, AdamW at lr."""
    model, ref = _lm(1), _lm(1)
    opt = build_muon_adamw(model, muon_lr=0.02, adamw_lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99))
    split = split_parameters(ref)
    ref_muon = Muon([p for _, p in split["muon"]], lr=0.02, weight_decay=0.1 * 1e-3 / 0.02)
    ref_adamw = torch.optim.AdamW([{"params": [p for _, p in split["adamw_decay"]], "weight_decay": 0.1},
                                   {"params": [p for _, p in split["adamw_no_decay"]], "weight_decay": 0.0}],
                                  lr=1e-3, betas=(0.9, 0.99))
    gen = _gen(13)
    for schedule in (1.0, 0.5, 0.25):
        x = torch.randint(0, 50, (2, 8), generator=gen)
        for group in opt.param_groups:
            group["lr"] = 1e-3 * schedule  # what the book's loop does
        for group in ref_muon.param_groups:
            group["lr"] = 0.02 * schedule
        for group in ref_adamw.param_groups:
            group["lr"] = 1e-3 * schedule
        for m, opts in ((model, [opt]), (ref, [ref_muon, ref_adamw])):
            m.loss(x).backward()
            for o in opts:
                o.step()
                o.zero_grad()
        assert all(group["lr"] == 1e-3 * schedule for group in opt.param_groups)  # restored after step
    for (name, a), b in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_adamw_rule_matches_torch_adamw():
    """The written-out AdamW of the non-Muon groups against torch.optim.AdamW (large lr and decay)."""
    gen = _gen(17)
    init = [torch.randn(5, 3, generator=gen), torch.randn(7, generator=gen)]
    ours = [nn.Parameter(t.clone()) for t in init]
    ref = [nn.Parameter(t.clone()) for t in init]
    opt = MuonAdamW([{"params": ours, "weight_decay": 0.3}], lr=0.05, betas=(0.8, 0.95), eps=1e-6)
    ref_opt = torch.optim.AdamW([{"params": ref, "weight_decay": 0.3}], lr=0.05, betas=(0.8, 0.95), eps=1e-6)
    for _ in range(6):
        grads = [torch.randn(t.shape, generator=gen) for t in init]
        for params, o in ((ours, opt), (ref, ref_opt)):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            o.step()
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_wrapper_trains_a_tiny_mlp():
    gen = _gen(14)
    X = torch.randn(256, 8, generator=gen)  # (N, 8)
    y = torch.sin(X @ torch.randn(8, 1, generator=gen))  # (N, 1)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1))
    opt = build_muon_adamw(mlp, muon_lr=0.02, adamw_lr=3e-3, weight_decay=0.0)
    first = None
    for _ in range(100):
        loss = ((mlp(X) - y) ** 2).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


def test_wrapper_state_dict_round_trip_and_checkpoint(tmp_path):
    model = _lm(2)
    opt = build_muon_adamw(model)
    _train_steps(model, opt, 3, seed=15)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    assert len(saved_opt["state"]) == len(list(model.parameters()))
    save_checkpoint(tmp_path / "ckpt.safetensors", model, opt, step=3)
    _train_steps(model, opt, 3, seed=16)

    resumed = _lm(99)
    resumed.load_state_dict(saved_model)
    opt2 = build_muon_adamw(resumed)
    opt2.load_state_dict(saved_opt)
    _train_steps(resumed, opt2, 3, seed=16)

    from_file = _lm(98)
    opt3 = build_muon_adamw(from_file)
    load_checkpoint(tmp_path / "ckpt.safetensors", from_file, opt3, restore_rng=False)
    _train_steps(from_file, opt3, 3, seed=16)
    for a, b, c in zip(model.parameters(), resumed.parameters(), from_file.parameters(), strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_wrapper_bad_inputs():
    model = _lm()
    opt = build_muon_adamw(model)
    state = opt.state_dict()
    state["param_groups"] = state["param_groups"][:2]
    with pytest.raises(ValueError, match="parameter groups"):
        opt.load_state_dict(state)
    with pytest.raises(ValueError, match="no parameter was selected for Muon"):
        build_muon_adamw(nn.Embedding(10, 4))
    with pytest.raises(ValueError, match="muon_lr"):
        build_muon_adamw(model, muon_lr=0.0)
    with pytest.raises(ValueError, match="betas"):
        build_muon_adamw(model, betas=(0.9, 1.5))
    with pytest.raises(ValueError, match=r"use_muon group.*shape \(3,\)"):
        MuonAdamW([{"params": [nn.Parameter(torch.ones(3))], "use_muon": True}], lr=0.1)
    with pytest.raises(ValueError, match="ns_steps"):
        MuonAdamW([nn.Parameter(torch.ones(3))], lr=0.1, ns_steps=0)
    assert isinstance(opt, torch.optim.Optimizer)


@pytest.mark.parametrize("make", ["muon", "wrapper"])
def test_deepcopy_and_pickle_keep_the_newton_schulz_settings(make):
    """torch.optim.Optimizer pickles only defaults/state/param_groups; the NS settings must survive too
    (a deep copy of (model, optimizer) is how one branches a run, e.g. WSD cool-downs from one stable phase)."""
    import pickle

    model = _lm(3)
    coefficients, dtype = CUBIC_COEFFICIENTS, torch.float64
    if make == "muon":
        opt = Muon([p for p in model.parameters() if p.ndim == 2], lr=0.02, coefficients=coefficients, ns_dtype=dtype)
    else:
        opt = build_muon_adamw(model)
        opt.coefficients, opt.ns_dtype = coefficients, dtype
    _train_steps(model, opt, 2, seed=21)
    branch_model, branch_opt = copy.deepcopy((model, opt))
    assert branch_opt.coefficients == coefficients and branch_opt.ns_dtype == dtype
    assert pickle.loads(pickle.dumps(opt)).coefficients == coefficients
    _train_steps(model, opt, 2, seed=22)
    _train_steps(branch_model, branch_opt, 2, seed=22)  # the copy steps its own parameters, identically
    for a, b in zip(model.parameters(), branch_model.parameters(), strict=True):
        assert torch.equal(a, b)
