"""One CGDM iteration in PyTorch, as the official ``train_visda.py::train``
(https://github.com/lijin118/CGDM).

Steps A (G, F1, F2: source CE + 0.01·E + α·pseudo-label weighted CE), B (F1, F2: source CE −
d + 0.01·E) and C ×num_k (G: d + 0.01·E + β·L_GD), each with its own train-mode forward pass of
the concatenated 2B batch. ``L_GD`` (``gradient_discrepancy_loss_margin``) takes the
classifier-parameter gradients with ``torch.autograd.grad(create_graph=True)`` and is
differentiated w.r.t. G: double backprop. Gradients the official code computes and then discards
(G in step B, F1/F2 in step C) are not computed here, as the JAX step does not compute them.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_reference.models import Generator, ResClassifier, backbone

EPS = 1e-5
COS_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class CGDMSettings:
    """The config values the iteration needs (``configs/digits_cgdm.yaml``)."""

    backbone: str = "lenet"
    in_channels: int = 1
    bottleneck_dim: int = 0
    widths: tuple[int, ...] = (256, 256)
    num_classes: int = 10
    dropout: float = 0.5
    lr: float = 0.01
    weight_decay: float = 5e-4
    f_momentum: float = 0.9
    g_momentum: float = 0.0
    num_k: int = 4
    entropy_weight: float = 0.01
    pseudo_weight: float = 0.01
    gd_weight: float = 0.01
    discrepancy_weight: float = 1.0


def entropy_im(p: torch.Tensor) -> torch.Tensor:
    """``Ent(p) = H_c(p) + D(p)`` (``utils.py::Entropy``)."""
    cond = -(p * torch.log(p + EPS)).sum(1).mean()
    mean = p.mean(0) + EPS
    return cond + (mean * torch.log(mean)).sum()


def discrepancy(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """MCD's ``mean |p1 − p2|``."""
    return (p1 - p2).abs().mean()


def weighted_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``Weighted_CrossEntropy``: ``w = 1 + exp(−H)``, normalised by its detached sum, then mean."""
    p = F.softmax(logits, 1)
    w = 1.0 + torch.exp((p * torch.log(p + EPS)).sum(1))
    w = w / w.sum().detach()
    return (w * F.cross_entropy(logits, labels, reduction="none")).mean()


def safe_cosine(x: torch.Tensor, y: torch.Tensor, dim: int) -> torch.Tensor:
    """PyTorch 1.6's ``cosine_similarity`` (the CGDM code's): ``x·y / sqrt(max(Σx²·Σy², ε²))``."""
    norms = (x * x).sum(dim) * (y * y).sum(dim)
    return (x * y).sum(dim) / torch.sqrt(torch.clamp(norms, min=COS_EPS**2))


def gradient_discrepancy(
    logits: dict[str, torch.Tensor],
    classifiers: dict[str, nn.Module],
    source_labels: torch.Tensor,
    target_labels: torch.Tensor,
) -> torch.Tensor:
    """``gradient_discrepancy_loss_margin``: per classifier, mean over its parameter tensors of
    1 − cos(∂CE_s/∂P, ∂L^W_t/∂P) (row-wise for matrices), then the mean of the two."""
    b = source_labels.shape[0]
    total = 0.0
    for name, z in logits.items():
        params = list(classifiers[name].parameters())
        loss_s = F.cross_entropy(z[:b], source_labels)
        loss_t = weighted_ce(z[b:], target_labels)
        g_s = torch.autograd.grad(loss_s, params, create_graph=True, retain_graph=True)
        g_t = torch.autograd.grad(loss_t, params, create_graph=True, retain_graph=True)
        cosines = [
            safe_cosine(s, t, 1).mean() if s.dim() == 2 else safe_cosine(s, t, 0)
            for s, t in zip(g_s, g_t, strict=True)
        ]
        total = total + torch.stack([1.0 - c for c in cosines]).mean()
    return total / len(logits)


class CGDMIteration:
    """The networks, the two optimizers and :meth:`step` (one full iteration)."""

    def __init__(self, settings: CGDMSettings, seed: int = 0, device: str = "cpu") -> None:
        torch.manual_seed(seed)
        self.s = settings
        trunk, dim = backbone(settings.backbone, settings.in_channels)
        self.g = Generator(trunk, dim, settings.bottleneck_dim).to(device)
        self.f = {
            n: ResClassifier(
                self.g.dim, settings.widths, settings.num_classes, settings.dropout
            ).to(device)
            for n in ("f1", "f2")
        }
        for module in (self.g, *self.f.values()):
            module.train()
        self.g_params = list(self.g.parameters())  # the digits/ImageCLEF G.parameters()
        f_params = [p for m in self.f.values() for p in m.parameters()]
        self.opt_g = torch.optim.SGD(
            self.g_params, settings.lr, settings.g_momentum, weight_decay=settings.weight_decay
        )
        self.opt_f = torch.optim.SGD(
            f_params, settings.lr, settings.f_momentum, weight_decay=settings.weight_decay
        )

    def state_tensors(self) -> list[torch.Tensor]:
        """Parameters, BN buffers and optimizer state: what persists between iterations."""
        tensors = [t for m in (self.g, *self.f.values()) for t in m.state_dict().values()]
        for opt in (self.opt_g, self.opt_f):
            tensors += [v for st in opt.state.values() for v in st.values() if torch.is_tensor(v)]
        return tensors

    def _forward(self, x: torch.Tensor, detach_g: bool = False):
        features = self.g(x)
        if detach_g:
            features = features.detach()
        return features, {n: f(features) for n, f in self.f.items()}

    def _terms(self, logits: dict[str, torch.Tensor], b: int, ys: torch.Tensor):
        ce = sum(F.cross_entropy(z[:b], ys) for z in logits.values())
        p1, p2 = (F.softmax(z[b:], 1) for z in logits.values())
        return ce, discrepancy(p1, p2), entropy_im(p1) + entropy_im(p2)

    def step(self, xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor, yt_hat: torch.Tensor):
        """A, B, C×num_k on one source and one target batch (pseudo-labels ``yt_hat``)."""
        s, b = self.s, ys.shape[0]
        x = torch.cat([xs, xt])
        # A: G, F1, F2.
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_f.zero_grad(set_to_none=True)
        _, logits = self._forward(x)
        ce, _, ent = self._terms(logits, b, ys)
        pseudo = sum(weighted_ce(z[b:], yt_hat) for z in logits.values())
        (ce + s.entropy_weight * ent + s.pseudo_weight * pseudo).backward()
        self.opt_g.step()
        self.opt_f.step()
        # B: F1, F2 (the official code backpropagates into G and discards it; skipped here).
        self.opt_f.zero_grad(set_to_none=True)
        _, logits = self._forward(x, detach_g=True)
        ce, disc, ent = self._terms(logits, b, ys)
        (ce - s.discrepancy_weight * disc + s.entropy_weight * ent).backward()
        self.opt_f.step()
        # C ×num_k: G only, with the double-backprop L_GD.
        for _ in range(s.num_k):
            _, logits = self._forward(x)
            _, disc, ent = self._terms(logits, b, ys)
            gd = gradient_discrepancy(logits, self.f, ys, yt_hat)
            loss = s.discrepancy_weight * disc + s.entropy_weight * ent + s.gd_weight * gd
            grads = torch.autograd.grad(loss, self.g_params)
            for p, g in zip(self.g_params, grads, strict=True):
                p.grad = g
            self.opt_g.step()
        return loss.detach()
