"""IA-RED² token dropping (nn/token_drop.py): hierarchy, exactness, gathered = masked, REINFORCE, FLOPs."""

import pytest
import torch

from latentforge.eval.cost import count_flops
from latentforge.nn.token_drop import TokenDropConfig, TokenDropViT, policy_reward, reinforce_loss

STEPS = 25  # REINFORCE steps of the toy (it is solved after ~10)


def tiny(**kw) -> TokenDropViT:
    torch.manual_seed(0)
    cfg = TokenDropConfig(image_size=16, patch=4, dim=32, depth=4, heads=2, stages=(0, 2), policy_heads=2,
                          policy_head_dim=8, **kw)
    return TokenDropViT(cfg).eval()


def images(b: int = 6) -> torch.Tensor:
    return torch.rand(b, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_config_rejects_bad_stages():
    with pytest.raises(ValueError):
        TokenDropConfig(depth=4, stages=(2, 1))
    with pytest.raises(ValueError):
        TokenDropConfig(depth=4, stages=(0, 4))


def test_dropped_tokens_never_come_back():
    model = tiny(init_keep_logit=0.0)
    x = images()
    out = model.masked_forward(x, ["sample", "sample"], generator=torch.Generator().manual_seed(0))
    first, second = out.keeps
    assert 0 < first.sum() < first.numel()
    assert not (second & ~first).any()  # kept after stage 2 implies kept after stage 1
    assert (out.probs[1][~first] == 0).all()  # a dropped patch gets no second decision
    # a given keep set that tries to revive dropped patches cannot
    revive = [first, torch.ones_like(first)]
    assert torch.equal(model.masked_forward(x, keeps=revive).keeps[1], first)
    gathered = model.gathered_forward(x)
    assert not (gathered.keeps[1] & ~gathered.keeps[0]).any()


def test_keep_all_equals_the_plain_transformer_exactly():
    model = tiny()
    x = images()
    with torch.no_grad():
        plain = model(x)
        assert torch.equal(model.masked_forward(x, ["all", "all"]).logits, plain)
        # sigmoid scores are > 0, so threshold 0 keeps every patch
        out = model.gathered_forward(x, threshold=0.0)
    assert all(k.all() for k in out.keeps)
    assert torch.equal(out.logits, plain)


def test_gathered_equals_masked_on_the_same_keep_sets():
    model = tiny(init_keep_logit=0.0, summary="mean")
    x = images(8)
    out = model.gathered_forward(x, threshold=0.5)
    counts = out.keeps[-1].sum(1)
    assert counts.min() < counts.max()  # unequal counts: the gathered batch carries padding
    assert (counts < 16).all()
    with torch.no_grad():
        masked = model.masked_forward(x, keeps=out.keeps)
    torch.testing.assert_close(out.logits, masked.logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(out.keeps, masked.keeps):
        assert torch.equal(a, b)
    # examples one at a time (no padding at all) or all in one group give the same answer
    for bucket in (1, None):
        alone = model.gathered_forward(x, threshold=0.5, bucket=bucket)
        torch.testing.assert_close(alone.logits, out.logits, atol=1e-5, rtol=1e-5)
        assert all(torch.equal(a, b) for a, b in zip(alone.keeps, out.keeps))
    # and the gathered pass's own decisions are the masked pass's thresholded ones
    with torch.no_grad():
        decided = model.masked_forward(x, ["threshold", "threshold"], threshold=0.5)
    for a, b in zip(out.probs, decided.probs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_policy_reward_values():
    cfg = TokenDropConfig(compute_weight=1.0, wrong_penalty=0.5)
    logits = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1])
    reward = policy_reward(logits, labels, torch.tensor([0.5, 0.5]), cfg)
    torch.testing.assert_close(reward, torch.tensor([0.75, -0.5]))


def marked_images(b: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Dim noise with one bright 4x4 patch at a random place: images [b, 3, 16, 16], its patch index [b]."""
    x = torch.rand(b, 3, 16, 16, generator=gen) * 0.4 - 1
    where = torch.randint(16, (b,), generator=gen)
    for i, n in enumerate(where.tolist()):
        r, c = divmod(n, 4)
        x[i, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = 1.0
    return x, where


def keep_probs_at_marked_and_elsewhere(model: TokenDropViT, gen: torch.Generator
                                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-1 keep probability of the marked patch [B] and the mean over the other 15 [B]."""
    x, marked = marked_images(64, gen)
    with torch.no_grad():
        p = model.masked_forward(x, ["threshold", "all"]).probs[0]  # [B, 16]
    at_marked = p.gather(1, marked[:, None])[:, 0]
    return at_marked, (p.sum(1) - at_marked) / 15


def test_reinforce_learns_to_keep_the_rewarded_token():
    # reward: +1 when the marked patch is kept, minus the fraction kept: keep it, drop the rest
    model = tiny(init_keep_logit=0.0)
    interpreter = model.interpreters[0]
    model.requires_grad_(False)
    interpreter.requires_grad_(True)
    opt = torch.optim.Adam(interpreter.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    before = keep_probs_at_marked_and_elsewhere(model, torch.Generator().manual_seed(5))
    assert before[0].min() < 0.8 and before[1].mean() > 0.2  # the untrained policy keeps ~half of everything
    for _ in range(STEPS):
        x, marked = marked_images(32, gen)
        out = model.masked_forward(x, ["sample", "all"], generator=gen)
        reward = out.keeps[0].gather(1, marked[:, None])[:, 0].float() - out.keep_fraction
        loss = reinforce_loss(out.log_probs[0], reward)
        opt.zero_grad()
        loss.backward()
        opt.step()
    at_marked, others = keep_probs_at_marked_and_elsewhere(model, torch.Generator().manual_seed(5))
    assert at_marked.min() > 0.8
    assert others.mean() < 0.2


def test_flops_fall_with_the_keep_ratio():
    model = tiny(init_keep_logit=0.0)
    x = images(8)
    flops, keeps = [], []
    for threshold in (0.0, 0.45, 0.5, 0.55, 1.0):
        out = model.gathered_forward(x, threshold)
        keeps.append(float(out.keep_fraction.mean()))
        flops.append(count_flops(lambda t=threshold: model.gathered_forward(x, t)))
    assert keeps == sorted(keeps, reverse=True) and keeps[0] == 1.0 and keeps[-1] == 0.0
    # padded to the batch's largest kept count, so FLOPs fall with it (never rise as fewer are kept)
    assert flops == sorted(flops, reverse=True)
    assert flops[0] > flops[2] > flops[-1]
    assert flops[-1] < 0.2 * flops[0]  # nothing kept: the CLS token alone goes through the blocks
