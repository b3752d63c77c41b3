"""A tiny CNN that reads what the input is: which order its channels are in, and whether it is an MRI slice.

Hand statistics cannot tell the two T1 channels from FLAIR reliably on one slice; a few convolutions
can (grey and white matter swap brightness between T1 and FLAIR, fat and vessels differ). Trained in
a few minutes on the dev slices (``brainseg.fit_input_check``), ~240 k weights, ~1 ms a slice:

- ``order`` head, 9 classes: the 6 orders of the three channels (``input_check.ORDERS``), then a
  single channel replicated (pre-contrast, FLAIR, post-contrast alone);
- ``mri`` head, one logit: a real slice (any of those 9 forms) against non-slices (:func:`negatives`):
  procedural ones (phantoms, smooth random fields, noise, gradients, shapes, words and logo marks on
  black) and crops of the photographs and drawings that ship inside scikit-image (``skimage.data``).
  The benchmark's non-brain group is matplotlib's sample images, which the CNN never sees.

A grey upload (one channel) is read by a second net, :class:`SingleChannelNet` (128 px, one input
channel, ~390 k weights): at 64 px and beside the orders the first net told FLAIR from a T1 channel
too weakly (see ``docs/input_check.md``). It runs only on grey uploads.
"""
from functools import lru_cache
from itertools import permutations
from typing import List, Tuple

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

NET_SIZE = 64
ORDERS = list(permutations(range(3)))
N_ORDER = len(ORDERS) + 3


def _strided(chans: List[int]) -> nn.Sequential:
    """Stride-2 3x3 conv, batch norm, ReLU from each width in ``chans`` to the next (both nets' body)."""
    return nn.Sequential(*[nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(b),
                                         nn.ReLU(inplace=True)) for a, b in zip(chans, chans[1:])])


class InputNet(nn.Module):
    """Four strided conv blocks, global average pool, two linear heads."""

    def __init__(self, width: int = 32):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        self.body = _strided(chans)
        self.order = nn.Linear(chans[-1], N_ORDER)
        self.mri = nn.Linear(chans[-1], 1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x).mean((2, 3))
        return self.order(h), self.mri(h)[:, 0]


SINGLE_SIZE = 128


class SingleChannelNet(nn.Module):
    """One grey channel -> which sequence it is (pre-contrast, FLAIR, post-contrast): five strided conv
    blocks at 128 px, global average pool, a linear head."""

    def __init__(self, width: int = 32):
        super().__init__()
        chans = [1, width, 2 * width, 4 * width, 4 * width, 4 * width]
        self.body = _strided(chans)
        self.head = nn.Linear(chans[-1], 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean((2, 3)))


def _optimiser(net: nn.Module, steps: int):
    """AdamW with a one-cycle schedule peaking at 3e-3, as both input CNNs train."""
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)


def _step(opt, sched, loss: torch.Tensor) -> None:
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def _zscore(x: np.ndarray) -> np.ndarray:
    """One channel z-scored over its foreground (above 5 % of its range), clipped to +-5."""
    fg = x > x.min() + 0.05 * (np.ptp(x) + 1e-6)
    v = x[fg] if fg.sum() > 16 else x.ravel()
    return np.clip((x - v.mean()) / (v.std() + 1e-6), -5, 5)


def single_input(image: np.ndarray) -> np.ndarray:
    """A grey slice (HxW, or HxWxC whose first channel is taken) -> 1x128x128 float32, z-scored."""
    a = np.asarray(image)
    a = a[..., 0] if a.ndim == 3 else a
    a = cv2.resize(np.ascontiguousarray(a, dtype=np.float32), (SINGLE_SIZE, SINGLE_SIZE), interpolation=cv2.INTER_AREA)
    return _zscore(a)[None].astype(np.float32)


def train_single(x: np.ndarray, epochs: int = 30, seed: int = 0, batch: int = 64, width: int = 32) -> SingleChannelNet:
    """Train on real slices ``x`` (N, 128, 128, 3), resized but not normalised, in the models' channel order
    (pass none that holds a channel twice: :func:`ambiguous_order`): each step shows one random channel of
    each slice, mirrored half the time, with a random gamma (0.74-1.35) for other scanners' contrast."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    net = SingleChannelNet(width)
    opt, sched = _optimiser(net, epochs * (len(x) // batch))
    net.train()
    for _ in range(epochs):
        order = np.random.permutation(len(x))
        for i in range(len(x) // batch):
            xs, ys = [], []
            for j in order[i * batch:(i + 1) * batch]:
                c = np.random.randint(3)
                v = x[j][..., c]
                v = v[:, ::-1] if np.random.rand() < 0.5 else v
                top = v.max() + 1e-6
                v = top * (v / top) ** np.exp(np.random.uniform(-0.3, 0.3))
                xs.append(_zscore(np.ascontiguousarray(v))[None].astype(np.float32))
                ys.append(c)
            _step(opt, sched, F.cross_entropy(net(torch.from_numpy(np.stack(xs))), torch.tensor(ys)))
    return net.eval()


@torch.no_grad()
def predict_single(net: SingleChannelNet, x: np.ndarray) -> np.ndarray:
    """Probabilities (N, 3) of (pre-contrast, FLAIR, post-contrast) for :func:`single_input` arrays (N, 1, 128, 128)."""
    return F.softmax(net(torch.from_numpy(np.ascontiguousarray(x, np.float32))), 1).numpy()


def net_input(image: np.ndarray) -> np.ndarray:
    """HxW or HxWxC (any dtype) -> 3x64x64 float32: resized, each channel z-scored over its foreground."""
    a = np.asarray(image)
    a = a[..., None] if a.ndim == 2 else a
    a = cv2.resize(np.ascontiguousarray(a, dtype=np.float32), (NET_SIZE, NET_SIZE), interpolation=cv2.INTER_AREA)
    a = a.reshape(NET_SIZE, NET_SIZE, -1)
    a = np.repeat(a, 3, -1) if a.shape[-1] == 1 else a[..., :3]
    out = np.empty((3, NET_SIZE, NET_SIZE), np.float32)
    for c in range(3):
        out[c] = _zscore(a[..., c])
    return out


def variants(x: np.ndarray) -> Tuple[np.ndarray, int]:
    """A random one of the 9 forms of a real slice (3x64x64, channels in the models' order) and its class."""
    k = np.random.randint(N_ORDER)
    if k < len(ORDERS):
        return x[list(ORDERS[k])], k
    c = k - len(ORDERS)
    return np.repeat(x[c:c + 1], 3, 0), k


# scikit-image's bundled pictures (no download): photographs, micrographs, text, a logo, a head phantom
PHOTOS = ("astronaut", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock", "coffee", "coins",
          "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
          "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text", "binary_blobs")
WORDS = ("brain", "scan", "report", "python", "data", "image", "logo", "plot", "test", "MRI", "hello", "figure")


@lru_cache(maxsize=1)
def photos() -> List[np.ndarray]:
    """:data:`PHOTOS` as float32 arrays, 0-255 (RGB or grey)."""
    import skimage.data

    out = []
    for name in PHOTOS:
        im = np.asarray(getattr(skimage.data, name)(), np.float32)
        im = im[..., :3] if im.ndim == 3 else im
        out.append(im * 255 if im.max() <= 1.0 else im)
    return out


def _photo(rng: np.random.Generator) -> np.ndarray:
    """A random crop of a scikit-image picture: grey or colour, mirrored, inverted, or on a black canvas."""
    im = photos()[rng.integers(len(PHOTOS))]
    im = im if im.ndim == 3 else np.repeat(im[..., None], 3, -1)
    h, w = im.shape[:2]
    f = rng.uniform(0.3, 1.0)
    ch, cw = max(8, int(h * f * rng.uniform(0.7, 1.0))), max(8, int(w * f * rng.uniform(0.7, 1.0)))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    c = im[y:y + ch, x:x + cw]
    if rng.random() < 0.3:
        c = np.repeat(c.mean(-1, keepdims=True), 3, -1)
    if rng.random() < 0.3:
        c = c[..., rng.permutation(3)]
    if rng.random() < 0.5:
        c = c[:, ::-1]
    if rng.random() < 0.3:
        c = 255 - c
    if rng.random() < 0.4:  # a cut-out, or a picture with a transparent background, on black
        canvas = np.zeros((int(ch * rng.uniform(1.1, 1.8)), int(cw * rng.uniform(1.1, 1.8)), 3), np.float32)
        yy, xx = rng.integers(0, canvas.shape[0] - ch + 1), rng.integers(0, canvas.shape[1] - cw + 1)
        canvas[yy:yy + ch, xx:xx + cw] = c
        c = canvas
    return np.ascontiguousarray(c)


def _marks(rng: np.random.Generator) -> np.ndarray:
    """Words, round marks and pie wedges in flat colours on black, at a banner's or a square's shape: what
    logos, icons and chart-like graphics look like."""
    h, w = int(rng.integers(80, 300)), int(rng.integers(150, 600))
    im = np.zeros((h, w, 3), np.uint8)  # OpenCV draws text on 8-bit images only
    colour = lambda: tuple(int(v) for v in rng.integers(40, 256, 3))  # noqa: E731
    for _ in range(rng.integers(1, 4)):
        font = int(rng.choice([0, 2, 3, 4, 6, 7])) | (16 if rng.random() < 0.4 else 0)  # 16: italic
        cv2.putText(im, " ".join(rng.choice(WORDS, rng.integers(1, 3))), (int(rng.integers(0, w // 3)),
                    int(rng.integers(h // 4, h))), font, float(rng.uniform(0.8, 3.5)), colour(),
                    int(rng.integers(1, 16)), cv2.LINE_AA)
    for _ in range(rng.integers(0, 3)):
        centre, r = (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(10, h // 2 + 11))
        cv2.circle(im, centre, r, colour(), int(rng.choice([-1, 2, 6])), cv2.LINE_AA)
        if rng.random() < 0.5:  # wedges of a pie or polar chart inside the mark
            for a in range(0, 360, int(rng.integers(30, 90))):
                cv2.ellipse(im, centre, (int(r * rng.uniform(0.3, 1.0)),) * 2, 0, a, a + float(rng.uniform(10, 40)),
                            colour(), -1, cv2.LINE_AA)
    return (cv2.resize(im, (256, 256)) if rng.random() < 0.5 else im).astype(np.float32)


def negatives(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` non-slices at net size, through :func:`net_input` (as an upload would be): half procedural
    (phantoms, fields, noise, gradients, shapes), a quarter scikit-image crops, a quarter words and marks."""
    out = []
    s = 256
    for _ in range(n):
        kind = rng.integers(5) if rng.random() < 0.5 else int(rng.integers(5, 7))
        if kind == 5:
            out.append(net_input(_photo(rng)))
            continue
        if kind == 6:
            out.append(net_input(_marks(rng)))
            continue
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


def ambiguous_order(x: np.ndarray) -> np.ndarray:
    """(N,) bool: slices (N, 3, 64, 64) with two channels alike (correlation > 0.99). The kaggle_3m release
    replaced a missing sequence by FLAIR, so some cases hold FLAIR two or three times: reordering those
    gives (almost) the same image under another label, which would teach the order head noise."""
    f = x.reshape(len(x), 3, -1)
    f = f - f.mean(-1, keepdims=True)
    f = f / (np.linalg.norm(f, axis=-1, keepdims=True) + 1e-6)
    c = np.einsum("nik,njk->nij", f, f)
    return (c[:, 0, 1] > 0.99) | (c[:, 0, 2] > 0.99) | (c[:, 1, 2] > 0.99)


def train(x: np.ndarray, epochs: int = 40, seed: int = 0, batch: int = 64, width: int = 32) -> InputNet:
    """Train on real slices ``x`` (N, 3, 64, 64) from :func:`net_input` (the order head not on
    :func:`ambiguous_order` slices), against :func:`negatives` drawn once."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    np.random.seed(seed)
    net = InputNet(width)
    opt, sched = _optimiser(net, epochs * (len(x) // batch))
    net.train()
    neg = torch.from_numpy(negatives(len(x), rng))  # made once: drawing them is most of an epoch's time
    known = ~ambiguous_order(x)
    for _ in range(epochs):
        order = np.random.permutation(len(x))
        for i in range(len(x) // batch):
            idx = order[i * batch:(i + 1) * batch]
            pairs = [variants(x[j][:, :, ::-1].copy() if np.random.rand() < 0.5 else x[j]) for j in idx]
            xb = torch.from_numpy(np.stack([p[0] for p in pairs]))
            yb = torch.tensor([p[1] for p in pairs])
            wb = torch.from_numpy(known[idx].astype(np.float32))
            nb = neg[torch.randint(len(neg), (batch // 4,))]
            logits, mri = net(torch.cat([xb, nb]))
            target = torch.cat([torch.ones(len(xb)), torch.zeros(len(nb))])
            order_loss = (F.cross_entropy(logits[:len(xb)], yb, reduction="none") * wb).sum() / wb.sum().clamp(min=1)
            _step(opt, sched, order_loss + F.binary_cross_entropy_with_logits(mri, target))
    return net.eval()


@torch.no_grad()
def predict(net: InputNet, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(log-probabilities of the 9 forms (N, 9), MRI logit (N,)) for :func:`net_input` arrays (N, 3, 64, 64)."""
    logits, mri = net(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
    return F.log_softmax(logits, 1).numpy(), mri.numpy()
