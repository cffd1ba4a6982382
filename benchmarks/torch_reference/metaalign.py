"""One GVB-GD + MetaAlign iteration in PyTorch, as the official code
(https://github.com/microsoft/MetaAlign).

Iterations alternate (``--step 1``): even = *cls first* (inner step on the source CE + GVB-G
penalty over G and the head; meta-test = GVB-GD alignment at θ' on the concatenated batch, with
the stale discriminator fast weights of the last *trs first* iteration), odd = *trs first*
(inner step on the alignment loss over G, head and D; meta-test = source CE at θ'). First order:
the inner gradient is taken with ``create_graph=True`` and then detached, as the official code.
Fast weights go through ``torch.func.functional_call`` instead of the official ``.fast``
attributes (same arithmetic). Optimizer: Nesterov SGD, momentum 0.9, weight decay 1e-3, lr
multipliers 1 (G) / 10 (head, D), inv schedule.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch.func import functional_call

from benchmarks.torch_reference.models import AdversarialNetwork, Generator, GVBNet, backbone

EPS = 1e-5
BCE_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class MetaAlignSettings:
    """The config values the iteration needs (``configs/digits_gvb_metaalign.yaml``)."""

    backbone: str = "lenet"
    in_channels: int = 1
    bottleneck_dim: int = 0
    num_classes: int = 10
    hidden: int = 1024
    dropout: float = 0.5
    lr: float = 1e-3
    weight_decay: float = 1e-3
    momentum: float = 0.9
    head_lr_mult: float = 10.0
    meta_lr: float = 1.0  # the official README run: 100 (see the digits config)
    trade_off: float = 1.0
    gamma: float = 0.001
    power: float = 0.75
    max_iter: float = 10000.0


class _Reverse(torch.autograd.Function):
    """Gradient reversal: identity forward, ``−coeff·grad`` backward (``grl_hook``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.coeff * grad, None


def grl_coeff(t: float, max_iter: float) -> float:
    """``c(t) = 2 / (1 + exp(−10·t/max_iter)) − 1``."""
    return 2.0 / (1.0 + math.exp(-10.0 * t / max_iter)) - 1.0


def gvb_transfer(d_logit: torch.Tensor, p: torch.Tensor, b: int, coeff: float) -> torch.Tensor:
    """``loss.DA``: ½ Σ w_i BCE(σ(d − b)) with per-domain normalised exp(−H), H reversed."""
    h = _Reverse.apply(-(p * torch.log(p + EPS)).sum(1), coeff)
    w = torch.exp(-h)
    ws, wt = w[:b], w[b:]
    w = torch.cat([ws / ws.sum().detach(), wt / wt.sum().detach()])
    q = torch.sigmoid(d_logit)
    n, device = d_logit.shape[0], d_logit.device
    y = torch.cat([torch.ones(b, device=device), torch.zeros(n - b, device=device)])
    bce = -(y * torch.log(q + BCE_EPS) + (1 - y) * torch.log(1 - q + BCE_EPS))
    return 0.5 * (w * bce).sum()


class MetaAlignIteration:
    """Base network (G + bridged head), discriminator, optimizer and :meth:`step`."""

    def __init__(self, settings: MetaAlignSettings, seed: int = 0, device: str = "cpu") -> None:
        torch.manual_seed(seed)
        self.s = settings
        trunk, dim = backbone(settings.backbone, settings.in_channels)
        generator = Generator(trunk, dim, settings.bottleneck_dim)
        self.net = GVBNet(generator, settings.num_classes).to(device)
        self.d = AdversarialNetwork(settings.num_classes, settings.hidden, settings.dropout)
        self.d = self.d.to(device)
        self.net.train()
        self.d.train()
        self.base = dict(self.net.named_parameters())
        self.d_params = dict(self.d.named_parameters())
        # inner multipliers (names containing 'fc' / 'gvb': 10) and outer lr multipliers
        self.inner_mult = {
            **{k: 10.0 if ("fc" in k or "gvb" in k) else 1.0 for k in self.base},
            **{k: 10.0 if "gvb" in k else 1.0 for k in self.d_params},
        }
        mult = settings.head_lr_mult
        groups = [
            {"params": list(self.net.g.parameters()), "lr_mult": 1.0},
            {"params": list(self.net.f.parameters()), "lr_mult": mult},
            {"params": list(self.d.parameters()), "lr_mult": mult},
        ]
        self.opt = torch.optim.SGD(
            groups,
            settings.lr,
            settings.momentum,
            weight_decay=settings.weight_decay,
            nesterov=True,
        )
        self.d_fast = {k: v.detach().clone() for k, v in self.d_params.items()}
        self.t = 0

    def state_tensors(self) -> list[torch.Tensor]:
        """Parameters, BN buffers, optimizer state and the stale fast θ_D."""
        tensors = [*self.net.state_dict().values(), *self.d.state_dict().values()]
        tensors += [v for st in self.opt.state.values() for v in st.values() if torch.is_tensor(v)]
        return tensors + list(self.d_fast.values())

    def _align(self, base, d_params, x, b):
        """GVB-GD alignment terms at ``base``/``d_params`` on the concatenated batch."""
        logits, z = functional_call(self.net, base, (x,))
        p = F.softmax(logits, 1)
        d_logit, d_bridge = functional_call(
            self.d, d_params, (_Reverse.apply(p, grl_coeff(self.t + 1, self.s.max_iter)),)
        )
        trs = gvb_transfer(d_logit, p, b, grl_coeff(self.t, self.s.max_iter))
        return self.s.trade_off * trs, d_bridge.abs().mean(), z.abs().mean()

    def _fast(self, params, loss):
        """``θ' = θ − α ⊙ detach(∇L)`` with α = meta_lr · lr(t) · mult."""
        names = list(params)
        grads = torch.autograd.grad(
            loss, [params[k] for k in names], create_graph=True, retain_graph=True
        )
        return {
            k: params[k] - self._alpha * self.inner_mult[k] * g.detach()
            for k, g in zip(names, grads, strict=True)
        }

    def step(self, xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor):
        """One iteration; the branch follows the iteration counter."""
        s, b = self.s, ys.shape[0]
        lr = s.lr * (1 + s.gamma * self.t) ** (-s.power)
        for group in self.opt.param_groups:
            group["lr"] = lr * group["lr_mult"]
        self._alpha = s.meta_lr * lr
        self.opt.zero_grad(set_to_none=True)
        x = torch.cat([xs, xt])
        if self.t % 2 == 0:  # cls first
            logits, z = functional_call(self.net, self.base, (xs,))
            cls, gvbg_s = F.cross_entropy(logits, ys), z.abs().mean()
            fast = self._fast(self.base, cls + gvbg_s)
            # stale fast θ_D of the last trs-first iteration, identity gradient to θ_D
            d_params = {k: p + (self.d_fast[k] - p).detach() for k, p in self.d_params.items()}
            trs, gvbd, gvbg_all = self._align(fast, d_params, x, b)
            total = cls + 0.5 * gvbg_s + trs + gvbd + 0.5 * gvbg_all
        else:  # trs first
            trs, gvbd, gvbg_all = self._align(self.base, self.d_params, x, b)
            train = trs + gvbd + gvbg_all
            fast = self._fast({**self.base, **self.d_params}, train)
            self.d_fast = {k: fast[k].detach() for k in self.d_params}
            logits, z = functional_call(self.net, {k: fast[k] for k in self.base}, (xs,))
            total = train + F.cross_entropy(logits, ys) + z.abs().mean()
        total.backward()
        self.opt.step()
        self.t += 1
        return total.detach()
