import numpy as np
import pytest
import torch

from latentforge.data.shapes import BACKGROUND, ShapesConfig, sample_and_render
from latentforge.nn.attention import Attention
from latentforge.pretraining.mp3 import MP3Classifier, MP3Config, MP3Encoder, position_backgrounds


def test_kv_index_equals_masking_the_other_keys():
    torch.manual_seed(0)
    attn = Attention(32, 4).eval()
    x = torch.randn(3, 10, 32)
    index = torch.stack([torch.randperm(10)[:4] for _ in range(3)])  # [B, 4]
    mask = torch.zeros(3, 10, dtype=torch.bool).scatter_(1, index, True)
    with torch.no_grad():
        assert torch.allclose(attn(x, kv_index=index), attn(x, key_mask=mask), atol=1e-6)
    with pytest.raises(ValueError, match="kv_index"):
        attn(x, kv_index=index, causal=True)


def test_tokens_outside_the_context_reach_nobody_but_themselves():
    # in every layer keys/values come from the context's current states only: perturbing a token
    # left out of the context changes its own output and no other token's
    torch.manual_seed(0)
    enc = MP3Encoder(MP3Config(size=16, patch=4, dim=32, depth=2, heads=2, mask_ratio=0.5)).eval()
    images = torch.rand(1, 3, 16, 16)
    context = torch.tensor([[0, 2, 5, 7, 8, 10, 13, 15]])
    changed = images.clone()
    changed[..., 0:4, 4:8] += torch.rand(3, 4, 4)  # token 1: not in the context (not a constant: LN removes it)
    with torch.no_grad():
        a, b = enc(images, context), enc(changed, context)
    moved = (a - b).abs().amax(-1)[0]  # [N]
    assert moved[1] > 1e-3
    assert moved[torch.arange(16) != 1].max() < 1e-6
    changed = images.clone()
    changed[..., 0:4, 8:12] += torch.rand(3, 4, 4)  # token 2: in the context, so everyone sees it
    with torch.no_grad():
        assert ((enc(changed, context) - a).abs().amax(-1) > 1e-4).all()


def test_the_encoder_has_no_positions_until_fine_tuning_adds_them():
    torch.manual_seed(0)
    enc = MP3Encoder(MP3Config(size=16, patch=4, dim=32, depth=1, heads=2)).eval()
    images = torch.rand(2, 3, 16, 16)
    perm = torch.randperm(16)
    tokens = enc.embed(images)
    with torch.no_grad():  # permutation-equivariant: positions come only from content
        assert torch.allclose(enc.transformer(tokens[:, perm]), enc.transformer(tokens)[:, perm], atol=1e-5)
    clf = MP3Classifier(enc, 3, position_embedding=True)
    assert clf.positions.abs().sum() == 0  # zero-initialised: starts as the pretrained encoder
    with torch.no_grad():
        assert torch.allclose(clf(images), clf.head(enc(images).mean(1)), atol=1e-6)


def test_context_size_follows_the_mask_ratio():
    enc = MP3Encoder(MP3Config(size=16, patch=4, dim=32, depth=1, heads=2, mask_ratio=0.75))
    ctx = enc.context(5, torch.Generator().manual_seed(0))
    assert ctx.shape == (5, 4) and all(len(set(row.tolist())) == 4 for row in ctx)
    assert MP3Encoder(MP3Config(size=16, patch=4, dim=32, depth=1, heads=2, mask_ratio=0.0)).context(5) is None
    with pytest.raises(ValueError, match="divide"):
        MP3Config(size=30, patch=4)


def test_backgrounds_replace_only_the_flat_background():
    _, images = sample_and_render(ShapesConfig(), "train", range(4), workers=1)
    out = position_backgrounds(images, BACKGROUND, seed=0)
    flat = (images == np.asarray(BACKGROUND, np.uint8)).all(-1)
    assert np.array_equal(out[~flat], images[~flat])
    # the background's stripes are finer to the right: more change between neighbouring pixels
    left, right = np.abs(np.diff(out[:, :, :8].astype(float), axis=2)), np.abs(np.diff(out[:, :, -8:].astype(float), axis=2))
    assert right.mean() > 1.5 * left.mean()


def test_position_prediction_learns_on_gradient_backgrounds():
    torch.manual_seed(0)
    _, images = sample_and_render(ShapesConfig(), "train", range(256), workers=1)
    x = torch.as_tensor(position_backgrounds(images, BACKGROUND, 0)).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.avg_pool2d(x, 2)  # 16 px, 16 positions: fast
    enc = MP3Encoder(MP3Config(size=16, patch=4, dim=32, depth=2, heads=2, mask_ratio=0.5))
    opt = torch.optim.AdamW(enc.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        batch = x[torch.randint(256, (32,), generator=g)]
        loss = enc.pretrain_loss(batch, g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc.eval()
    assert enc.position_accuracy(x[:64]) > 0.5  # chance 1/16
