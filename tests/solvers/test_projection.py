"""DiffStateGrad projection: the paper's formula and properties, and the reference code's rank."""

import numpy as np
import pytest
import torch

from restore_cli.solvers.projection import DiffStateGrad, paper_rank


def _orth(n, k, seed):
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return q[:, :k]


def test_formula_on_hand_built_state():
    """State U diag(s) V^T with known U, V, s: rank 2 at tau = 0.99, G' = U_2 U_2^T G V_2 V_2^T."""
    u, v = _orth(6, 4, 0), _orth(5, 4, 1)
    s = torch.tensor([10.0, 5.0, 0.5, 0.1], dtype=torch.float64)
    state = (u * s) @ v.T
    # cumulative energy: 100/125.26 = 0.798, 125/125.26 = 0.998 -> r = 2
    g = torch.randn(1, 1, 6, 5, dtype=torch.float64)
    p = DiffStateGrad(0.99).at(state[None, None])
    assert p.rank.tolist() == [[2]]
    u2, v2 = u[:, :2], v[:, :2]
    torch.testing.assert_close(p(g), (u2 @ u2.T @ g[0, 0] @ v2 @ v2.T)[None, None])
    assert DiffStateGrad(0.7).at(state[None, None]).rank.tolist() == [[1]]


def test_rank_rule():
    s = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    # energies 9, 4, 1, 0 of 14: cumulative 0.643, 0.929, 1.0, 1.0
    assert paper_rank(s, 0.5).tolist() == [1]
    assert paper_rank(s, 0.9).tolist() == [2]
    assert paper_rank(s, 0.99).tolist() == [3]
    assert paper_rank(s, 1.0).tolist() == [3]


def test_identity_at_tau_one_and_idempotent():
    state = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    g = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(DiffStateGrad(1.0).at(state)(g), g)  # square full-rank states
    p = DiffStateGrad(0.9).at(state)
    assert (p.rank < 8).all()
    torch.testing.assert_close(p(p(g)), p(g))
    # the projection is orthogonal: it never lengthens a gradient
    assert (p(g).flatten(1).norm(dim=1) <= g.flatten(1).norm(dim=1) + 1e-12).all()


def test_batch_independent_and_per_channel():
    state = torch.randn(3, 3, 7, 9, dtype=torch.float64)
    state[1, 2] = torch.outer(torch.arange(7.0), torch.ones(9)).double()  # a rank-1 channel
    g = torch.randn(3, 3, 7, 9, dtype=torch.float64)
    for mode in ("channels", "paper", "reference"):
        dsg = DiffStateGrad(0.95, rank_mode=mode)
        full = dsg.at(state)(g)
        for i in range(3):
            torch.testing.assert_close(full[i:i + 1], dsg.at(state[i:i + 1])(g[i:i + 1]))
    assert DiffStateGrad(0.95, rank_mode="paper").at(state).rank[1, 2] == 1  # per channel


def test_period():
    state, g = torch.randn(1, 3, 6, 6), torch.randn(1, 3, 6, 6)
    p = DiffStateGrad(0.5, period=5).at(state)
    for step in range(11):
        out = p(g, step)
        if step % 5 == 0:
            assert not torch.allclose(out, g)
        else:
            assert out is g


def test_reference_rank_matches_released_code_rule():
    """The code's rank: numpy cumsum over the flattened [C, K] energies, searchsorted + 1, int(n / 3)."""
    rng = np.random.default_rng(0)
    for trial in range(5):
        state = torch.from_numpy(rng.standard_normal((1, 3, 32, 32)) * rng.uniform(0.1, 3, (1, 3, 1, 1)))
        state = state + torch.from_numpy(np.linspace(0, 5, 32))[None, None, :, None]  # some structure
        s = torch.linalg.svd(state, full_matrices=False)[1]
        e = s[0].numpy() ** 2
        cum = np.cumsum(e) / np.sum(e)  # flattens [3, K]
        expected = int((np.searchsorted(cum, 0.99) + 1) / 3)
        got = DiffStateGrad(0.99, rank_mode="reference").at(state).rank
        assert got.tolist() == [[expected] * 3]
        # and it keeps far more directions than the paper's per-channel rule
        assert got.sum() > paper_rank(s, 0.99).sum()


def test_bad_configuration():
    with pytest.raises(ValueError):
        DiffStateGrad(0.0)
    with pytest.raises(ValueError):
        DiffStateGrad(0.9, period=0)
    with pytest.raises(ValueError):
        DiffStateGrad(0.9, rank_mode="mean")


def test_a_diverged_state_passes_its_gradient_through():
    """A NaN state (a diverged image) has no subspace: its gradient is left as is, and the other
    images of the batch are projected exactly as they would be alone (no SVD failure)."""
    torch.manual_seed(0)
    state, g = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    dsg = DiffStateGrad(0.9)
    alone = dsg.at(state[1:])(g[1:])
    state[0, 0, 3, 3] = float("nan")
    out = dsg.at(state)(g)
    assert torch.equal(out[0], g[0])
    assert torch.allclose(out[1], alone[0], atol=1e-6)


def test_channels_rank_is_the_codes_rule_generalised():
    """The default rule: the released code's flattened count n divided by the number of channels. It is the
    code's rule on 3 channels (RGB, LDM-VQ-4 latents), the paper's per-channel rank on 1 channel, and on 4
    channels (Stable Diffusion) it projects where the code's literal n / 3 keeps every direction."""
    from restore_cli.solvers.projection import channels_rank, reference_rank

    g = torch.Generator().manual_seed(0)
    decay = torch.logspace(0, -3, 16, dtype=torch.float64)
    for c in (1, 3, 4):
        # a state whose channels have similar, fast-decaying spectra (like a smooth image's)
        u = torch.linalg.qr(torch.randn(2, c, 16, 16, generator=g, dtype=torch.float64))[0]
        v = torch.linalg.qr(torch.randn(2, c, 16, 16, generator=g, dtype=torch.float64))[0]
        state = u @ torch.diag_embed(decay.expand(2, c, 16)) @ v.transpose(-2, -1)
        s = torch.linalg.svd(state)[1]
        rank = DiffStateGrad(0.99).at(state).rank
        assert torch.equal(rank, channels_rank(s, 0.99))
        if c == 3:
            assert torch.equal(rank, reference_rank(s, 0.99))
        if c == 1:
            assert torch.equal(rank, paper_rank(s, 0.99))
        if c == 4:
            assert (reference_rank(s, 0.99) == 16).all() and (rank < 16).all()
    assert DiffStateGrad().rank_mode == "channels"
