"""Device-resident batches: seeded shuffle, shard by rank, augment per batch in plain torch;
an epoch is reproducible on any device and world size (docs/DATASETS.md)."""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "BatchLoader"]

_ERASE_SCALE = (0.02, 0.33)  # fraction of the image area, torchvision's default
_ERASE_RATIO = (0.3, 3.3)    # aspect ratio h / w, torchvision's default
_ERASE_TRIES = 10            # torchvision gives up (no erasing) after 10 rejected boxes
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation, applied per batch (docs/DATASETS.md)."""

    crop_padding: int = 0  # zero padding per side before a random crop back to (H, W); 0: none
    flip: bool = False  # a random horizontal flip, probability 0.5
    erase_prob: float = 0.0  # probability of zeroing a random rectangle after normalisation
    randaugment: tuple[int, int] | None = None  # (num_ops, magnitude) of RandAugment, or None
    color_jitter: float = 0.0  # ColorJitter brightness = contrast = saturation; 0: off

    def __post_init__(self):
        pad, ra = self.crop_padding, self.randaugment
        _require(_is_int(pad) and pad >= 0,
                 f"augment.crop_padding must be an int >= 0, got {pad!r}")
        _require(isinstance(self.flip, bool),
                 f"augment.flip must be true or false, got {self.flip!r}")
        _require(_is_number(self.erase_prob) and 0.0 <= self.erase_prob <= 1.0,
                 f"augment.erase_prob must be a probability in [0, 1], got {self.erase_prob!r}")
        _require(_is_number(self.color_jitter) and 0.0 <= self.color_jitter <= 1.0,
                 f"augment.color_jitter must be in [0, 1] (0 = off), got {self.color_jitter!r}")
        if ra is not None:
            _require(isinstance(ra, (tuple, list)) and len(ra) == 2 and all(map(_is_int, ra))
                     and ra[0] >= 1 and 0 <= ra[1] <= 30, "augment.randaugment must be None or "
                     f"(num_ops >= 1, magnitude in 0..30), got {ra!r}")
            object.__setattr__(self, "randaugment", tuple(ra))  # a TOML list becomes a tuple


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _mix_seed(*values: int) -> int:
    """One 64-bit seed from integers (splitmix64): (0, 1) and (1, 0) get unrelated streams."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h


def _torchvision_ops(cfg: AugmentConfig):
    """torchvision's RandAugment / ColorJitter, or None when ``cfg`` uses neither."""
    if cfg.randaugment is None and not cfg.color_jitter:
        return None
    try:
        from torchvision.transforms import v2
    except Exception:
        what, off = ("randaugment", "none") if cfg.randaugment else ("color_jitter", "0")
        raise ImportError(f"{what} needs torchvision; pip install 'pemn[augment]' "
                          f"or set augment.{what} to {off}") from None
    ops = []
    if cfg.randaugment is not None:
        ops.append(v2.RandAugment(num_ops=cfg.randaugment[0], magnitude=cfg.randaugment[1]))
    if cfg.color_jitter > 0:
        j = cfg.color_jitter
        ops.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
    return v2.Compose(ops)


def crop_flip(x: torch.Tensor, padding: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop of (B, C, H, W) images zero-padded by ``padding`` (offsets uniform in
    [0, 2 * padding]), and a random horizontal flip if ``flip``, as one gather."""
    B, C, H, W = x.shape
    if padding:
        x = F.pad(x, (padding,) * 4)  # zeros = black, as torchvision's RandomCrop(padding)
    Hp, Wp = H + 2 * padding, W + 2 * padding
    dy = torch.randint(0, 2 * padding + 1, (B, 1), generator=gen)
    dx = torch.randint(0, 2 * padding + 1, (B, 1), generator=gen)
    rows = dy + torch.arange(H)  # (B, H) rows of the padded image to take
    cols = dx + torch.arange(W)  # (B, W)
    if flip:
        cols = torch.where(torch.rand(B, 1, generator=gen) < 0.5, cols.flip(1), cols)
    index = (rows[:, :, None] * Wp + cols[:, None, :]).view(B, 1, H * W).to(x.device)
    return x.reshape(B, C, Hp * Wp).gather(2, index.expand(B, C, H * W)).view(B, C, H, W)


def erase_mask(B: int, H: int, W: int, prob: float, gen: torch.Generator,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool (B, H, W), True where pixels are erased: torchvision's RandomErasing, vectorised (the
    first of ``_ERASE_TRIES`` boxes drawn that fits, else none)."""
    area = H * W * torch.empty(B, _ERASE_TRIES).uniform_(*_ERASE_SCALE, generator=gen)
    log_ratio = torch.empty(B, _ERASE_TRIES).uniform_(
        math.log(_ERASE_RATIO[0]), math.log(_ERASE_RATIO[1]), generator=gen)
    h = torch.sqrt(area * log_ratio.exp()).round().long()  # (B, tries)
    w = torch.sqrt(area / log_ratio.exp()).round().long()
    fits = (h < H) & (w < W)
    first = fits.long().argmax(1, keepdim=True)  # first fitting draw (0 if none fits)
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    apply = (torch.rand(B, generator=gen) < prob) & fits.any(1)
    top = (torch.rand(B, generator=gen) * (H - h + 1)).long()  # uniform in [0, H - h]
    left = (torch.rand(B, generator=gen) * (W - w + 1)).long()
    top, left, h, w, apply = (t.to(device) for t in (top, left, h, w, apply))
    r = torch.arange(H, device=device)[None, :]
    c = torch.arange(W, device=device)[None, :]
    in_rows = (r >= top[:, None]) & (r < (top + h)[:, None])  # (B, H)
    in_cols = (c >= left[:, None]) & (c < (left + w)[:, None])  # (B, W)
    return in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None]


def _apply_per_image(x: torch.Tensor, ops, gen: torch.Generator) -> torch.Tensor:
    """Run torchvision ``ops`` image by image (not one op per batch), seeded from ``gen``."""
    seeds = torch.randint(0, 2**62, (x.shape[0],), generator=gen).tolist()
    out = torch.empty_like(x)
    with torch.random.fork_rng(devices=[]):
        for i, s in enumerate(seeds):
            torch.default_generator.manual_seed(s)
            out[i] = ops(x[i])
    return out


class BatchLoader:
    """Batches of uint8 (N, C, H, W) ``images`` and integer (N,) ``labels`` held on ``device``, as
    normalised float32 images and int64 labels; ``shuffle``: a seeded permutation per epoch, of
    which each ``rank`` takes an equal shard. ImportError: ``augment`` needs torchvision."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 shuffle: bool, augment: AugmentConfig | None = None, mean: Sequence[float],
                 std: Sequence[float], device: torch.device | str = "cpu", seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = False,
                 channels_last: bool = False):
        _validate(images, labels, batch_size, mean, std, rank, world_size)
        if augment is not None and not isinstance(augment, AugmentConfig):
            raise TypeError("augment must be an AugmentConfig or None, "
                            f"got {type(augment).__name__}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.drop_last, self.channels_last = drop_last, channels_last
        self.epoch = 0
        self._tv_ops = _torchvision_ops(augment) if augment is not None else None
        # x_norm = (x / 255 - mean) / std = x * scale - shift, per channel, shaped (1, C, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32)
        mean_t = torch.tensor(mean, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1).to(self.device)
        self._shift = (mean_t / std_t).view(1, -1, 1, 1).to(self.device)
        self.num_samples = len(images) // world_size  # this rank's images per epoch
        _require(len(self) > 0, f"no batch: {self.num_samples} images per rank, batch_size "
                 f"{batch_size}, drop_last={drop_last}")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation and augmentation stream; call before each epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in batch order (CPU int64)."""
        n = len(self.images)
        gen = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch, 0))
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        return order[: self.num_samples * self.world_size][self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices().to(self.device)
        gen = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch, 1, self.rank))
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self._transform(self.images[idx], gen), self.labels[idx]

    def _transform(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """uint8 (B, C, H, W) -> augmented, normalised float32 (B, C, H, W)."""
        aug = self.augment
        if aug is not None and (aug.crop_padding or aug.flip):
            x = crop_flip(x, aug.crop_padding, aug.flip, gen)
        if self._tv_ops is not None:
            x = _apply_per_image(x, self._tv_ops, gen)
        x = x.float().mul_(self._scale).sub_(self._shift)
        if aug is not None and aug.erase_prob > 0:
            B, _, H, W = x.shape
            x.masked_fill_(erase_mask(B, H, W, aug.erase_prob, gen, x.device)[:, None], 0.0)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def _validate(images, labels, batch_size, mean, std, rank, world_size) -> None:
    def got(x) -> str:
        return f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}"

    _require(isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4,
             f"images must be a uint8 tensor (N, C, H, W), got {got(images)}")
    n, c = images.shape[:2]
    _require(isinstance(labels, torch.Tensor) and labels.shape == (n,)
             and not labels.is_floating_point(),
             f"labels must be an integer tensor ({n},), got {got(labels)}")
    _require(_is_int(batch_size) and batch_size >= 1,
             f"batch_size must be an int >= 1, got {batch_size!r}")
    _require(len(mean) == c and len(std) == c and min(std) > 0, f"mean and std need {c} values "
             f"(one per channel, std > 0), got mean={tuple(mean)} std={tuple(std)}")
    _require(isinstance(world_size, int) and isinstance(rank, int) and 0 <= rank < world_size,
             f"need 0 <= rank < world_size, got rank={rank!r} world_size={world_size!r}")
