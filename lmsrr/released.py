"""A straightforward implementation of the released code's training step (models/lmsrr.py and
backbone/LMSRR.py of CL-Coder236/LMSRR): the truth our single-prefix-pass step is tested against
(tests/test_equivalence.py) and the baseline provider of the step benchmark (bench/).

Four forward passes: the net for logits, the net again for features, the whole old net for its
features, the net on the replay batch. Each pass runs every source's complete timm forward and
collects the trainable blocks' outputs with forward hooks (like Hugging Face's hidden_states).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def released_msidf(fusion, x):
    """MultiScaleFusion.forward: conv1 (k=3), conv2 (k=5), softmax over the 3 fusion weights."""
    w = torch.softmax(fusion.mix_logits, dim=0)
    out = 0
    for i, weight in enumerate(fusion.weights):
        k = weight.shape[-1]
        branch = F.conv1d(x, weight.unsqueeze(0), fusion.biases[i:i + 1], padding=k // 2)
        out = out + w[i] * branch
    return out.squeeze(1)


def released_forward(net, x, returnt="out"):
    features, pooled = [], []
    for src in net.sources:
        captured = []
        hooks = [b.register_forward_hook(lambda m, i, o: captured.append(o)) for b in src.blocks]
        try:
            m = src.model
            f = m.forward_head(m.forward_features(src.preprocess(x)), pre_logits=True)
        finally:
            for h in hooks:
                h.remove()
        features.append(captured)
        pooled.append(f)
    if returnt == "feature":
        return features
    x = net.fusion.stack(pooled)
    if net.fusion.attention is not None:  # our 'attention' variant; the released code has none
        x = net.fusion.attention(x)
    return net.classifier(released_msidf(net.fusion, x))


def released_loss(net, old_net, switch, task, x, y, buf_x, buf_logits, noise, alpha, beta):
    outputs = released_forward(net, x)
    total = F.cross_entropy(outputs, y)
    if task > 0:
        features = released_forward(net, x, "feature")
        old_features = released_forward(old_net, x, "feature")
        feature_loss, layer_count = 0.0, 0.0
        sw = switch
        for s, (prev_src, cur_src) in enumerate(zip(old_features, features)):
            for l, (prev, cur) in enumerate(zip(prev_src, cur_src)):
                p = torch.softmax((sw.logits[s, l] + noise[s, l]) / sw.tau, dim=-1)[0]
                feature_loss = feature_loss + F.mse_loss(prev.detach(), cur) * p
                layer_count = layer_count + p
        if layer_count > 0:
            feature_loss = feature_loss / layer_count
        total = total + alpha * feature_loss
    if buf_x is not None:
        buf_outputs = released_forward(net, buf_x)
        total = total + beta * F.mse_loss(buf_outputs, buf_logits)
    return total
