import torch
import torch.nn.functional as F
from torch import nn

from latentforge.eval.cost import count_flops, inference_cost, parameter_count, peak_bytes


def test_flops_of_a_linear_layer_and_of_attention_are_the_textbook_counts():
    layer, x = nn.Linear(8, 5), torch.randn(3, 8)
    assert count_flops(lambda: layer(x)) == 2 * 3 * 8 * 5
    q, k = torch.randn(2, 4, 16, 8), torch.randn(2, 4, 10, 8)
    # QK^T and AV: two multiply-adds per (query, key, channel); the CPU kernel included
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, k)) == 2 * (2 * 2 * 4 * 16 * 10 * 8)


def test_peak_bytes_count_what_the_call_creates_and_frees():
    def two_buffers():
        a = torch.empty(1000, dtype=torch.float32)  # 4,000 bytes
        del a
        return torch.empty(500, dtype=torch.float64)  # 4,000 bytes, after a is freed

    assert peak_bytes(two_buffers) == 4000

    def both_alive():
        a = torch.empty(1000)
        return a, torch.empty(250)

    assert peak_bytes(both_alive) == 5000


def test_shared_parameters_count_once_and_inference_cost_has_every_field():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert parameter_count(model) == 20
    model[0].bias.requires_grad_(False)
    assert parameter_count(model, trainable_only=True) == 16
    cost = inference_cost(lambda: model(torch.randn(2, 4)), repeats=2)
    assert cost["flops"] == 2 * (2 * 2 * 4 * 4) and cost["peak_bytes"] > 0 and cost["infer_s"] > 0


def test_flops_of_sampling_a_regression_head_mar_are_counted():
    """The MSE head's learned query used to reach its denoiser as an expanded view of a parameter,
    which under no_grad still claims to need grad: FlopCounterMode's module tracker refused it."""
    from dataclasses import replace

    from latentforge.generators.mar import MARConfig, MARGenerator

    model = MARGenerator(replace(MARConfig.tiny(), head_objective="mse")).eval()
    assert count_flops(lambda: model.sample(2, steps=2)) > 0
