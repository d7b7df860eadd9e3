import torch
import torch.nn as nn
import torch.nn.functional as F

from lmsrr.models.msidf import MSIDF


class ReleasedMultiScaleFusion(nn.Module):
    """backbone/LMSRR.py's MultiScaleFusion, written out with nn.Conv1d."""

    def __init__(self, num_feature):
        super().__init__()
        self.conv1 = nn.Conv1d(num_feature, 1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(num_feature, 1, kernel_size=5, padding=2)
        self.fusion_weight = nn.Parameter(torch.ones(3))

    def forward(self, x):
        weights = F.softmax(self.fusion_weight, dim=0)
        return (weights[0] * self.conv1(x) + weights[1] * self.conv2(x)).squeeze(1)


def test_reference_variant_matches_released_formula():
    ours = MSIDF([24, 24, 24], 24, (3, 5), "reference")
    rel = ReleasedMultiScaleFusion(3)
    with torch.no_grad():
        ours.mix_logits.copy_(torch.randn(3))
        rel.fusion_weight.copy_(ours.mix_logits)
        rel.conv1.weight.copy_(ours.weights[0].unsqueeze(0))
        rel.conv2.weight.copy_(ours.weights[1].unsqueeze(0))
        ours.biases.copy_(torch.tensor([0.3, -0.2]))
        rel.conv1.bias.fill_(0.3)
        rel.conv2.bias.fill_(-0.2)
    feats = [torch.randn(5, 24) for _ in range(3)]
    torch.testing.assert_close(ours(feats), rel(torch.stack(feats, 1)))
    assert ours.mix_logits.numel() == 3  # the released vector has an unused third entry


def test_reference_initialisation_matches_released_code():
    m = MSIDF([16, 16], 16, (3, 5), "reference")
    assert torch.equal(m.biases.detach(), torch.full((2,), 0.1))
    assert torch.equal(m.mix_logits.detach(), torch.ones(3))
    bound = (6 / (2 * 5 + 5)) ** 0.5  # xavier_uniform fans of Conv1d(2, 1, 5).weight
    assert m.weights[1].abs().max() <= bound


def test_attention_reweights_sources_and_starts_uniform():
    m = MSIDF([8, 12], 12, (3, 5), "attention")
    feats = [torch.randn(4, 8), torch.randn(4, 12)]
    x = m.stack(feats)
    assert torch.allclose(m.attention(x), x)  # zero-initialised scores: uniform attention
    with torch.no_grad():
        m.attention.score[2].weight.normal_()
    a = m.attention(x)
    assert not torch.allclose(a, x)
    # per-sample weights over sources, summing to S: x_s scaled by S * softmax
    scale = (a / x)[:, :, 0]
    torch.testing.assert_close(scale.sum(1), torch.full((4,), 2.0))
