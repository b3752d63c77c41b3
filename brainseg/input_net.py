"""A tiny CNN that reads what the input is: which order its channels are in, and whether it is an MRI slice.

Hand statistics cannot tell the two T1 channels from FLAIR reliably on one slice; a few convolutions
can (grey and white matter swap brightness between T1 and FLAIR, fat and vessels differ). Trained in
about a minute on the dev slices (``brainseg.fit_input_check``), ~30 k weights, ~1 ms a slice:

- ``order`` head, 9 classes: the 6 orders of the three channels (``input_check.ORDERS``), then a
  single channel replicated (pre-contrast, FLAIR, post-contrast alone);
- ``mri`` head, one logit: a real slice (any of those 9 forms) against procedural non-slices
  (phantoms, smooth random fields, noise, gradients, shapes; :func:`negatives`).
"""
from itertools import permutations
from typing import Tuple

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

NET_SIZE = 64
ORDERS = list(permutations(range(3)))
N_ORDER = len(ORDERS) + 3


class InputNet(nn.Module):
    """Four strided conv blocks, global average pool, two linear heads."""

    def __init__(self, width: int = 32):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        self.body = nn.Sequential(*[nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False),
                                                  nn.BatchNorm2d(b), nn.ReLU(inplace=True))
                                    for a, b in zip(chans, chans[1:])])
        self.order = nn.Linear(chans[-1], N_ORDER)
        self.mri = nn.Linear(chans[-1], 1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x).mean((2, 3))
        return self.order(h), self.mri(h)[:, 0]


def net_input(image: np.ndarray) -> np.ndarray:
    """HxW or HxWxC (any dtype) -> 3x64x64 float32: resized, each channel z-scored over its foreground."""
    a = np.asarray(image)
    a = a[..., None] if a.ndim == 2 else a
    a = cv2.resize(np.ascontiguousarray(a, dtype=np.float32), (NET_SIZE, NET_SIZE), interpolation=cv2.INTER_AREA)
    a = a.reshape(NET_SIZE, NET_SIZE, -1)
    a = np.repeat(a, 3, -1) if a.shape[-1] == 1 else a[..., :3]
    out = np.empty((3, NET_SIZE, NET_SIZE), np.float32)
    for c in range(3):
        x = a[..., c]
        fg = x > x.min() + 0.05 * (np.ptp(x) + 1e-6)
        v = x[fg] if fg.sum() > 16 else x.ravel()
        out[c] = np.clip((x - v.mean()) / (v.std() + 1e-6), -5, 5)
    return out


def variants(x: np.ndarray) -> Tuple[np.ndarray, int]:
    """A random one of the 9 forms of a real slice (3x64x64, channels in the models' order) and its class."""
    k = np.random.randint(N_ORDER)
    if k < len(ORDERS):
        return x[list(ORDERS[k])], k
    c = k - len(ORDERS)
    return np.repeat(x[c:c + 1], 3, 0), k


def negatives(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` procedural non-slices at net size, through :func:`net_input` (as an upload would be)."""
    out = []
    s = 256
    for _ in range(n):
        kind = rng.integers(5)
        im = np.zeros((s, s, 3), np.float32)
        if kind == 0:  # phantom: ellipses and blobs
            for _ in range(rng.integers(1, 4)):
                cv2.ellipse(im, tuple(int(v) for v in rng.integers(60, 196, 2)),
                            tuple(int(v) for v in rng.integers(15, 110, 2)), float(rng.integers(180)), 0, 360,
                            tuple(float(v) for v in rng.uniform(30, 255, 3)), -1)
            im += rng.normal(0, rng.uniform(0, 10), im.shape) * (im > 0)
        elif kind == 1:  # smooth random field
            im = cv2.GaussianBlur(rng.uniform(0, 255, (s, s, 3)).astype(np.float32), (0, 0), float(rng.uniform(2, 30)))
        elif kind == 2:  # noise
            im = rng.uniform(0, 255, (s, s, 3)).astype(np.float32)
        elif kind == 3:  # gradient
            g = np.linspace(0, 1, s, dtype=np.float32)
            im = (np.outer(g, rng.uniform(0, 1, s)) if rng.random() < 0.5 else np.add.outer(g, g))[..., None] * \
                rng.uniform(50, 255, 3).astype(np.float32)
        else:  # rectangles and text-like strokes
            for _ in range(rng.integers(2, 8)):
                p, q = (tuple(int(v) for v in rng.integers(0, s, 2)) for _ in range(2))
                cv2.rectangle(im, p, q, tuple(float(v) for v in rng.uniform(0, 255, 3)), int(rng.choice([-1, 2, 5])))
        out.append(net_input(im))
    return np.stack(out)


def train(x: np.ndarray, epochs: int = 40, seed: int = 0, batch: int = 64, width: int = 32) -> InputNet:
    """Train on real slices ``x`` (N, 3, 64, 64) from :func:`net_input`, with fresh negatives each epoch."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    np.random.seed(seed)
    net = InputNet(width)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    net.train()
    neg = torch.from_numpy(negatives(len(x) // 2, rng))  # made once: drawing them is most of an epoch's time
    for _ in range(epochs):
        order = np.random.permutation(len(x))
        for i in range(len(x) // batch):
            idx = order[i * batch:(i + 1) * batch]
            pairs = [variants(x[j][:, :, ::-1].copy() if np.random.rand() < 0.5 else x[j]) for j in idx]
            xb = torch.from_numpy(np.stack([p[0] for p in pairs]))
            yb = torch.tensor([p[1] for p in pairs])
            nb = neg[torch.randint(len(neg), (batch // 4,))]
            logits, mri = net(torch.cat([xb, nb]))
            target = torch.cat([torch.ones(len(xb)), torch.zeros(len(nb))])
            loss = F.cross_entropy(logits[:len(xb)], yb) + F.binary_cross_entropy_with_logits(mri, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@torch.no_grad()
def predict(net: InputNet, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(log-probabilities of the 9 forms (N, 9), MRI logit (N,)) for :func:`net_input` arrays (N, 3, 64, 64)."""
    logits, mri = net(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
    return F.log_softmax(logits, 1).numpy(), mri.numpy()
