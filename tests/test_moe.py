import pytest
import torch
import torch.nn.functional as F

from latentforge.generators.diffusion import DiTConfig, DiTGenerator
from latentforge.nn.moe import ExpertChoiceMLP
from latentforge.nn.transformer import MLP


def reference(moe: ExpertChoiceMLP, x: torch.Tensor) -> torch.Tensor:
    """Expert-choice routing written as loops: each expert takes its C best tokens of each example."""
    B, T, D = x.shape
    C = moe.capacity(T)
    out = torch.zeros_like(x)
    for b in range(B):
        scores = F.softmax(x[b] @ moe.router.weight.t(), dim=-1)  # [T, E]
        for e in range(moe.experts):
            for t in scores[:, e].topk(C).indices:
                h = F.gelu(x[b, t] @ moe.fc[e] + moe.fc_bias[e, 0], approximate="tanh")
                out[b, t] += scores[t, e] * (h @ moe.proj[e] + moe.proj_bias[e, 0])
    return out


@pytest.mark.parametrize("experts,top_k", [(4, 1.0), (4, 2.0), (3, 0.5), (1, 1.0)])
def test_matches_the_loop_reference(experts, top_k):
    torch.manual_seed(0)
    moe = ExpertChoiceMLP(16, 24, experts, top_k)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 10, 16)
    assert torch.allclose(moe(x), reference(moe, x), atol=1e-5)


def test_one_expert_with_full_capacity_is_the_dense_mlp():
    torch.manual_seed(0)
    moe = ExpertChoiceMLP(8, 12, experts=1, top_k=1.0)
    dense = MLP(8, 12)
    with torch.no_grad():
        dense.fc.weight.copy_(moe.fc[0].t())
        dense.fc.bias.copy_(moe.fc_bias[0, 0].normal_())
        dense.proj.weight.copy_(moe.proj[0].t())
        dense.proj.bias.copy_(moe.proj_bias[0, 0].normal_())
    x = torch.randn(2, 5, 8)
    assert torch.allclose(moe(x), dense(x), atol=1e-6)  # the softmax over one expert is 1


def test_load_is_balanced_and_examples_are_independent():
    torch.manual_seed(1)
    moe = ExpertChoiceMLP(8, 16, experts=4, top_k=1.0)
    x = torch.randn(5, 12, 8)
    assert moe.capacity(12) == 3  # every expert takes exactly 3 tokens of each example
    together = moe(x)
    alone = torch.cat([moe(x[i : i + 1]) for i in range(5)])
    assert torch.allclose(together, alone, atol=1e-6)
    together.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in moe.parameters())


def test_dit_with_experts_trains_and_samples():
    torch.manual_seed(0)
    cfg = DiTConfig(grid=(4, 4), channels=2, dim=32, depth=2, heads=2, moe_experts=4, moe_top_k=1.0)
    model = DiTGenerator(cfg)
    assert not isinstance(model.blocks[0].mlp, ExpertChoiceMLP) and isinstance(model.blocks[1].mlp, ExpertChoiceMLP)
    pattern = torch.randn(4, 4, 2, generator=torch.Generator().manual_seed(3)).sign()  # one image, up to noise
    z = pattern + 0.05 * torch.randn(64, 4, 4, 2)
    model.latent_norm.fit(z)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    first = None
    for _ in range(60):
        loss = model.loss(z[torch.randint(64, (32,))])["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first  # flow loss starts near 2 (|eps - x|^2 per value)
    out = model.eval().sample(3, generator=torch.Generator().manual_seed(0), steps=4)
    assert out.shape == (3, 4, 4, 2) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="moe"):
        DiTConfig(moe_experts=2, moe_top_k=3.0)
