"""LoRA adapters (nn/lora.py): start as the trained model, train only the update, merge exactly."""

import pytest
import torch
from torch import nn

from latentforge.nn.lora import LoRALinear, add_lora, merge_lora
from latentforge.nn.transformer import Transformer


def test_adapter_starts_as_the_base_layer_and_merges_to_w_plus_scaled_ba():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = LoRALinear(base, rank=2, alpha=4.0)
    x = torch.randn(3, 6)
    assert torch.equal(layer(x), base(x))                  # B = 0 at init
    with torch.no_grad():
        layer.lora_b.normal_()
    want = x @ (base.weight + 2.0 * layer.lora_b @ layer.lora_a).t() + base.bias  # s = alpha / r = 2
    assert torch.allclose(layer(x), want, atol=1e-5)
    assert torch.allclose(layer.merged()(x), want, atol=1e-5)
    assert not base.weight.requires_grad and layer.lora_a.requires_grad
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(base, rank=0)


def test_only_the_adapters_train_and_they_fit_a_low_rank_change():
    """A frozen random layer must become W + dW with dW of rank 2: a rank-2 adapter fits it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8))
    target = nn.Linear(8, 8)
    with torch.no_grad():
        target.load_state_dict(model[0].state_dict())
        target.weight += torch.randn(8, 2) @ torch.randn(2, 8) * 0.5
    names = add_lora(model, rank=2, targets=("0",))
    assert names == ["0"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["0.lora_a", "0.lora_b"]
    frozen = model[0].base.weight.clone()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    x = torch.randn(256, 8)
    for _ in range(600):
        opt.zero_grad()
        loss = (model(x) - target(x)).pow(2).mean()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 1e-3
    assert torch.equal(model[0].base.weight, frozen)
    assert merge_lora(model) == 1 and isinstance(model[0], nn.Linear)
    assert torch.allclose(model(x), target(x), atol=0.05)


def test_a_transformer_adapts_its_attention_and_merges_to_the_same_outputs():
    torch.manual_seed(0)
    net = Transformer(16, depth=2, heads=2)
    x = torch.randn(2, 5, 16)
    before = net(x)
    wrapped = add_lora(net, rank=4, targets=("attn.qkv", "attn.proj"))
    assert len(wrapped) == 4 and torch.equal(net(x), before)
    for name, p in net.named_parameters():
        if "lora_b" in name:
            torch.nn.init.normal_(p, std=0.1)
    adapted = net(x)
    assert not torch.allclose(adapted, before, atol=1e-3)
    merge_lora(net)
    assert torch.allclose(net(x), adapted, atol=1e-5)
    assert not any("lora" in n for n in net.state_dict())
    with pytest.raises(ValueError, match="the model's linear layers end in"):
        add_lora(net, rank=2, targets=("nope",))
