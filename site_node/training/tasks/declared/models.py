"""The model families of declared tasks (torch; imported only when a model is built)."""

from __future__ import annotations

import torch
from torch import nn

from site_node.training.tasks.declared.spec import TaskSpec

__all__ = ["DeclaredModel", "build_model"]


def _dense(n_in: int, hidden: list[int], n_out: int, dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(n_in, width), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        n_in = width
    layers.append(nn.Linear(n_in, n_out))
    return layers


class DeclaredModel(nn.Module):
    """linear / mlp over the flattened sample, cnn1d or gru over (batch, length, features).

    Outputs: regression ``scale * head`` (clipped in evaluation only, so an out-of-range
    prediction still gets a gradient in training), binary a logit, multiclass K logits.
    """

    def __init__(self, spec: TaskSpec) -> None:
        super().__init__()
        m, win, tgt = spec.model, spec.window, spec.target
        n_feat = len(spec.feature_names)
        n_out = len(tgt.classes) if tgt.objective == "multiclass" else 1
        self.sequence = m.family in ("cnn1d", "gru")
        self.family = m.family
        self.multiclass = tgt.objective == "multiclass"
        self.scale = tgt.output_scale if tgt.objective == "regression" else 1.0
        self.clip = tgt.output_clip if tgt.objective == "regression" else None
        n_in = len(win.aggregates) * n_feat if win.mode == "aggregate" else win.length * n_feat
        if m.family == "cnn1d":
            convs: list[nn.Module] = []
            channels = n_feat
            for width, kernel in zip(m.channels, m.kernels, strict=True):
                convs += [nn.Conv1d(channels, width, kernel, padding=kernel // 2), nn.ReLU()]
                if m.dropout:
                    convs.append(nn.Dropout(m.dropout))
                channels = width
            self.body: nn.Module = nn.Sequential(*convs)
            head_in = channels * win.length
        elif m.family == "gru":
            self.body = nn.GRU(
                n_feat,
                m.gru_hidden,
                m.gru_layers,
                batch_first=True,
                dropout=m.dropout if m.gru_layers > 1 else 0.0,
            )
            head_in = m.gru_hidden
        else:
            self.body = nn.Identity()
            head_in = n_in
        self.head = nn.Sequential(nn.Flatten(), *_dense(head_in, m.hidden, n_out, m.dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.family == "cnn1d":
            z = self.body(x.transpose(1, 2))
        elif self.family == "gru":
            z = self.body(x)[0][:, -1, :]
        else:
            z = x
        out = self.head(z)
        if self.multiclass:
            return out  # type: ignore[no-any-return]
        out = out.squeeze(-1) * self.scale
        if self.clip is not None and not self.training:
            out = out.clamp(self.clip[0], self.clip[1])
        return out  # type: ignore[no-any-return]


def build_model(spec: TaskSpec) -> DeclaredModel:
    return DeclaredModel(spec)
