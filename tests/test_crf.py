"""The from-scratch linear-chain CRF against brute-force enumeration and against ``torchcrf``."""

from __future__ import annotations

import itertools

import pytest
import torch

from scratchlm.heads import CRF
from scratchlm.heads.crf import FORBIDDEN

torchcrf = pytest.importorskip("torchcrf")


def _crf(K: int, seed: int, dtype=torch.float32, **kwargs) -> CRF:
    torch.manual_seed(seed)
    crf = CRF(K, **kwargs).to(dtype)
    with torch.no_grad():  # larger than the default init, so paths differ clearly in score
        for p in crf.parameters():
            p.normal_(0.0, 1.0)
    return crf


def _batch(B: int, T: int, K: int, lengths: list[int], seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    emissions = torch.randn(B, T, K, generator=g, dtype=dtype)  # (B, T, K)
    tags = torch.randint(0, K, (B, T), generator=g)  # (B, T)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)
    return emissions, tags, mask


def _hand_score(crf: CRF, em: torch.Tensor, path: list[int]) -> float:
    """One row, one path, plain Python loop: start + Σ emissions + Σ transitions + end."""
    start, end, trans = crf.start_transitions, crf.end_transitions, crf.transitions
    with torch.no_grad():
        s = start[path[0]] + em[0, path[0]]
        for t in range(1, len(path)):
            s = s + trans[path[t - 1], path[t]] + em[t, path[t]]
        return float(s + end[path[-1]])


def _allowed(crf: CRF, path: tuple[int, ...]) -> bool:
    if crf.allowed_start is not None and not crf.allowed_start[path[0]]:
        return False
    if crf.allowed_end is not None and not crf.allowed_end[path[-1]]:
        return False
    return crf.allowed_transitions is None or all(crf.allowed_transitions[a, b] for a, b in zip(path[:-1], path[1:], strict=True))


def _brute(crf: CRF, em: torch.Tensor, length: int) -> tuple[float, list[int]]:
    """log Z and the argmax path of one row by enumerating all K^length (allowed) paths."""
    paths = [p for p in itertools.product(range(crf.num_tags), repeat=length) if _allowed(crf, p)]
    scores = torch.tensor([_hand_score(crf, em, list(p)) for p in paths], dtype=torch.float64)
    return float(torch.logsumexp(scores, 0)), list(paths[int(scores.argmax())])


CASES = [(1, [1]), (2, [2, 1]), (3, [3, 1, 2]), (4, [4, 2, 3, 1]), (4, [4, 4, 4, 4])]


@pytest.mark.parametrize("T,lengths", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_brute_force(T, lengths, seed):
    K = 3
    crf = _crf(K, seed, torch.float64)
    em, tags, mask = _batch(len(lengths), T, K, lengths, seed + 10, torch.float64)
    log_z = crf.log_partition(em, mask)  # (B,)
    score = crf.score(em, tags, mask)  # (B,)
    decoded = crf.decode(em, mask)
    paths, best = crf.viterbi(em, mask)
    for b, n in enumerate(lengths):
        ref_z, ref_path = _brute(crf, em[b], n)
        assert log_z[b].item() == pytest.approx(ref_z, abs=1e-9)
        assert decoded[b] == ref_path
        assert paths[b, :n].tolist() == ref_path and (paths[b, n:] == -100).all()
        assert best[b].item() == pytest.approx(_hand_score(crf, em[b], ref_path), abs=1e-9)
        assert score[b].item() == pytest.approx(_hand_score(crf, em[b], tags[b, :n].tolist()), abs=1e-9)
    # NLL = log Z − score, and it is the negative log of a probability: ≥ 0
    nll = crf.nll(em, tags, mask, reduction="none")
    torch.testing.assert_close(nll, log_z - score)
    assert (nll >= 0).all()


def test_probabilities_sum_to_one():
    crf = _crf(3, 5, torch.float64)
    em, _, mask = _batch(1, 3, 3, [3], 6, torch.float64)
    with torch.no_grad():
        total = sum(torch.exp(-crf.nll(em, torch.tensor([p]), mask, "sum"))
                    for p in itertools.product(range(3), repeat=3))
    assert float(total) == pytest.approx(1.0, abs=1e-12)


def test_padding_values_are_ignored():
    """Whatever sits at padded positions (emissions, tags, -100) changes nothing."""
    crf = _crf(3, 0)
    em, tags, mask = _batch(3, 4, 3, [4, 2, 1], 1)
    em2, tags2 = em.clone(), tags.clone()
    em2[~mask] = 123.0
    tags2[~mask] = -100
    torch.testing.assert_close(crf.nll(em, tags, mask, "none"), crf.nll(em2, tags2, mask, "none"))
    assert crf.decode(em, mask) == crf.decode(em2, mask)


def test_constraints_against_brute_force():
    """BIO over one entity type (O=0, B=1, I=2): I never starts a sentence nor follows O."""
    allowed = torch.ones(3, 3, dtype=torch.bool)
    allowed[0, 2] = False
    start = torch.tensor([True, True, False])
    crf = _crf(3, 3, torch.float64, allowed_transitions=allowed, allowed_start=start,
               allowed_end=torch.tensor([True, True, False]))
    with torch.no_grad():
        crf.transitions[0, 2] = 5.0  # the forbidden transition would win without the constraint
        crf.start_transitions[2] = 5.0
    lengths = [4, 3, 2, 1]
    em, _, mask = _batch(4, 4, 3, lengths, 7, torch.float64)
    em[:, :, 2] += 2.0  # and so would tag I everywhere
    log_z = crf.log_partition(em, mask)
    for b, (n, path) in enumerate(zip(lengths, crf.decode(em, mask), strict=True)):
        ref_z, ref_path = _brute(crf, em[b], n)
        assert log_z[b].item() == pytest.approx(ref_z, abs=1e-9)
        assert path == ref_path and _allowed(crf, tuple(path))
    # a gold path that breaks the constraints is (practically) impossible
    bad = crf.nll(em[:1], torch.tensor([[0, 2, 2, 0]]), mask[:1], "none")
    assert bad.item() > -FORBIDDEN / 2
    with pytest.raises(ValueError, match="allowed_transitions must be a bool tensor of shape"):
        CRF(3, allowed_transitions=torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="allowed_start must be a bool tensor"):
        CRF(3, allowed_start=torch.ones(3))


def test_compiles_without_graph_breaks():
    """nll and viterbi trace into one graph: no host sync (.item(), bool(tensor)) inside."""
    crf = _crf(3, 0)
    em, tags, mask = _batch(2, 4, 3, [4, 2], 0)
    nll = torch.compile(crf.nll, fullgraph=True, backend="eager")
    viterbi = torch.compile(crf.viterbi, fullgraph=True, backend="eager")
    torch.testing.assert_close(nll(em, tags, mask), crf.nll(em, tags, mask))
    assert torch.equal(viterbi(em, mask)[0], crf.viterbi(em, mask)[0])


@pytest.mark.filterwarnings("ignore:where received a uint8 condition tensor")  # inside torchcrf
@pytest.mark.parametrize("reduction", ["sum", "mean", "token_mean", "none"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_against_torchcrf(reduction, seed):
    B, T, K = 6, 7, 5
    ours = _crf(K, seed)
    ref = torchcrf.CRF(K, batch_first=True)
    ref.load_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    em, tags, mask = _batch(B, T, K, lengths.tolist(), seed)
    torch.testing.assert_close(ours.nll(em, tags, mask, reduction), -ref(em, tags, mask, reduction))
    assert ours.decode(em, mask) == ref.decode(em, mask)
    # no mask = every position real
    torch.testing.assert_close(ours.nll(em, tags, None, reduction), -ref(em, tags, None, reduction))
    assert ours.decode(em) == ref.decode(em)


def test_integer_masks_and_half_precision():
    crf = _crf(4, 0)
    em, tags, mask = _batch(3, 5, 4, [5, 3, 1], 0)
    expected = crf.nll(em, tags, mask, "none")
    torch.testing.assert_close(crf.nll(em, tags, mask.long(), "none"), expected)
    torch.testing.assert_close(crf.nll(em, tags, mask.to(torch.uint8), "none"), expected)
    low = crf.nll(em.bfloat16(), tags, mask, "none")
    assert low.dtype == torch.float32  # computed in float32, not bfloat16
    torch.testing.assert_close(low, expected, atol=0.1, rtol=0.02)


def test_gradcheck_float64():
    """Analytic gradients of the NLL match finite differences, for emissions and all parameters."""
    crf = _crf(3, 0, torch.float64)
    em, tags, mask = _batch(2, 3, 3, [3, 2], 0, torch.float64)
    names = ["start_transitions", "end_transitions", "transitions"]

    def nll(emissions, start, end, trans):
        params = dict(zip(names, (start, end, trans), strict=True))
        return torch.func.functional_call(crf, params, (emissions, tags, mask), {"reduction": "none"})

    inputs = [em] + [getattr(crf, n).detach() for n in names]
    assert torch.autograd.gradcheck(nll, tuple(x.clone().requires_grad_(True) for x in inputs))
    # and the decoded path gets a gradient too (its score is differentiable)
    em.requires_grad_(True)
    _, best = crf.viterbi(em, mask)
    best.sum().backward()
    assert em.grad is not None and em.grad.abs().sum() > 0


def test_bad_inputs():
    crf = CRF(3)
    em, tags, mask = _batch(2, 4, 3, [4, 2], 0)
    with pytest.raises(ValueError, match="num_tags must be a positive int"):
        CRF(0)
    with pytest.raises(TypeError, match="emissions must be a torch.Tensor"):
        crf.log_partition(em.tolist())
    with pytest.raises(TypeError, match="floating-point"):
        crf.log_partition(em.long())
    with pytest.raises(ValueError, match=r"emissions must have shape \(B, T, 3\)"):
        crf.log_partition(em[..., :2])
    with pytest.raises(ValueError, match=r"emissions must have shape"):
        crf.log_partition(em[0])
    with pytest.raises(ValueError, match="at least one time step"):
        crf.log_partition(em[:, :0])
    with pytest.raises(TypeError, match="tags must be an integer tensor"):
        crf.nll(em, tags.float(), mask)
    with pytest.raises(ValueError, match="tags must have shape"):
        crf.nll(em, tags[:, :3], mask)
    with pytest.raises(TypeError, match="mask must be a bool or 0/1 integer tensor"):
        crf.nll(em, tags, mask.float())
    with pytest.raises(ValueError, match="mask must have shape"):
        crf.nll(em, tags, mask[:, :3])
    with pytest.raises(ValueError, match="reduction must be one of"):
        crf.nll(em, tags, mask, reduction="avg")
    # value checks: validate() and decode()
    crf.validate(em, tags, mask)  # fine
    off = mask.clone()
    off[1, 0] = False
    with pytest.raises(ValueError, match=r"first position of every row must be real.*\[1\]"):
        crf.validate(em, tags, off)
    with pytest.raises(ValueError, match="first position"):
        crf.decode(em, off)
    holes = mask.clone()
    holes[0, 2] = False
    with pytest.raises(ValueError, match=r"rows \[0\] have holes"):
        crf.decode(em, holes)
    with pytest.raises(ValueError, match="only 0 and 1"):
        crf.validate(em, tags, mask.long() * 2)
    bad_tags = tags.clone()
    bad_tags[0, 0] = 3
    with pytest.raises(ValueError, match=r"tags at real positions must be in \[0, 3\); got \[3\]"):
        crf.validate(em, bad_tags, mask)
    padded = tags.clone()
    padded[1, 2:] = -100  # tags at padding are not checked
    crf.validate(em, padded, mask)
