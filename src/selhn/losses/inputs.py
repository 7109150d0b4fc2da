"""What every loss does to its inputs before scoring them: shape and value checks, float32 scores
whatever the autocast state, the pair index, and (optionally) gathering over the process group.

A batch holds P pairs. Caption p is paired with image row ``rows[p]`` of the image embeddings
(``caption_to_image``; by default row p), and pairs that share a group (``ids``; by default their
image row) are not negatives of each other. ``duplicates`` names captions that also describe
another image of the batch (an identical caption, an identical image): false negatives, which
the triplet losses leave out of the negatives and InfoNCE counts as positives.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.amp.autocast_mode import is_autocast_available

from selhn.losses.gather import gather_batch, process_group_size

REDUCTIONS = ("mean", "none")


@dataclass(frozen=True)
class Duplicates:
    """Which captions of a batch also describe another of its images, by identity: images with
    equal ``image_keys`` are one image (a caption of either describes both), and a caption whose
    ``caption_keys`` value is among an image's ``image_captions`` describes it (an identical
    caption, or one the caller counts as the same). Keys are integers >= 0; -1 pads
    ``image_captions``.

    ``image_keys``: (N,) one per image row; ``caption_keys``: (P,) one per caption;
    ``image_captions``: (N, K) the caption keys of each image (all its known captions, not only
    those in the batch).
    """

    image_keys: Tensor
    caption_keys: Tensor
    image_captions: Tensor

    def describes(self, images: Tensor, caption_images: Tensor) -> Tensor:
        """(len(images), P) bool: caption q describes image row ``images[i]``
        (``caption_images``: the (P,) image row of each caption)."""
        keys, captions = self.image_keys, self.caption_keys
        described = keys[images][:, None] == keys[caption_images][None, :]
        table = self.image_captions[images]
        # padding becomes a value no caption key has, so it matches nothing
        table = torch.where(table >= 0, table, captions.min() - 1 if captions.numel() else -1)
        for column in table.unbind(dim=1):  # one (len(images), P) comparison per known caption
            described |= column[:, None] == captions[None, :]
        return described

    def pairs(self, caption_images: Tensor) -> tuple[Tensor, Tensor]:
        """(image rows, captions): every (i, q) with caption q describing image row i, each
        once, found by sorting the keys rather than comparing every image with every caption
        (``describes`` of all the rows, as indices)."""
        n_images = self.image_keys.shape[0]
        owners = torch.arange(n_images, device=self.image_keys.device)
        named = self.image_captions >= 0
        same_image = _matching(self.image_keys, owners, self.image_keys[caption_images])
        same_caption = _matching(
            self.image_captions[named], owners[:, None].expand_as(named)[named], self.caption_keys
        )
        flat = torch.cat([pair[0] * len(caption_images) + pair[1]
                          for pair in (same_image, same_caption)]).unique()  # fmt: skip
        return flat // len(caption_images), flat % len(caption_images)

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.image_keys, self.caption_keys, self.image_captions


def _matching(keys: Tensor, owners: Tensor, queries: Tensor) -> tuple[Tensor, Tensor]:
    """(owner, query) for every entry of ``keys`` equal to a query (``owners``: the owner of
    each key)."""
    keys, order = keys.long().sort()
    queries = queries.long()
    start = torch.searchsorted(keys, queries, side="left")
    count = torch.searchsorted(keys, queries, side="right") - start
    query = torch.repeat_interleave(torch.arange(len(queries), device=queries.device), count)
    first = torch.repeat_interleave(start - (count.cumsum(0) - count), count)
    return owners[order[first + torch.arange(len(query), device=queries.device)]], query


@dataclass(frozen=True)
class PairIndex:
    """Which score-matrix row each pair uses and which pairs are not negatives of each other.

    ``rows``: (P,) image row of each pair; None when pair p is row p (a square score matrix).
    ``groups``: (P,) pairs with equal values are not negatives of each other; None when only a
    pair itself is excluded. Where ``rows`` is given, ``groups`` is too. ``duplicates``: which
    captions also describe another image (``Duplicates``), or None.
    """

    rows: Tensor | None = None
    groups: Tensor | None = None
    duplicates: Duplicates | None = None

    @classmethod
    def of(
        cls, rows: Tensor | None, ids: Tensor | None, duplicates: Duplicates | None = None
    ) -> PairIndex:
        """Pairs grouped by ``ids``, or by their image row when no ids are given."""
        return cls(rows, rows if ids is None else ids, duplicates)

    def tensors(self) -> tuple[Tensor | None, ...]:
        """Every tensor of the index, for an autograd function to save (``from_tensors``)."""
        dup = self.duplicates.tensors() if self.duplicates is not None else (None, None, None)
        return (self.rows, self.groups, *dup)

    @classmethod
    def from_tensors(cls, rows, groups, image_keys, caption_keys, image_captions) -> PairIndex:
        duplicates = None
        if image_keys is not None:
            duplicates = Duplicates(image_keys, caption_keys, image_captions)
        return cls(rows, groups, duplicates)

    def image_rows(self, n_pairs: int, device: torch.device) -> Tensor:
        """(P,) the image row of each pair."""
        return torch.arange(n_pairs, device=device) if self.rows is None else self.rows

    def excluded(self, start: int, stop: int, n_pairs: int, device: torch.device) -> Tensor | None:
        """(stop - start, P): pairs ``start:stop`` (rows of the pair score matrix) against every
        caption, True where the caption is not a negative of the pair's image (the same group,
        or a duplicate); None where only a pair's own caption is."""
        same = None
        if self.groups is not None:
            same = self.groups[start:stop, None] == self.groups[None, :]
        if self.duplicates is None:
            return same
        rows = self.image_rows(n_pairs, device)
        described = self.duplicates.describes(rows[start:stop], rows)
        return described if same is None else same | described


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}")
    return reduction


def checks_by_default(device: torch.device) -> bool:
    """Input checks read values back to the host: free on the CPU, a synchronisation elsewhere."""
    return device.type == "cpu"


@contextlib.contextmanager
def scoring_precision(device: torch.device) -> Iterator[None]:
    """Autocast off for the loss's own arithmetic, so scores and gaps stay in float32."""
    if is_autocast_available(device.type):
        with torch.autocast(device.type, enabled=False):
            yield
    else:
        yield


def as_scoring_dtype(value: Tensor) -> Tensor:
    """float16/bfloat16 become float32 (gradients go back in the input's own dtype); float32 and
    float64 stay."""
    return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value


def check_floating(name: str, value: Tensor) -> None:
    """TypeError unless ``value`` is a real floating-point tensor."""
    if not isinstance(value, Tensor) or not value.dtype.is_floating_point:
        kind = value.dtype if isinstance(value, Tensor) else type(value).__name__
        raise TypeError(f"{name} must be a floating-point tensor; got {kind}")


# Scores are refused beyond this magnitude: the losses add a margin to them, subtract them from
# one another and (InfoNCE) multiply them by at most 100, all within float32's range.
MAX_SCORE = torch.finfo(torch.float32).max / 1024


def check_score_range(name: str, scores: Tensor) -> None:
    """ValueError if a score is so large that the loss's arithmetic on it would overflow."""
    largest = float(scores.detach().abs().max()) if scores.numel() else 0.0
    if largest > MAX_SCORE:
        raise ValueError(
            f"{name} are too large: |score| reaches {largest:.3g}, above {MAX_SCORE:.3g}, where "
            "the loss overflows; normalise the embeddings (cosine scores lie in [-1, 1])"
        )


def _largest_norm(emb: Tensor) -> float:
    """The largest row norm of (B, D) embeddings (infinite if it overflows float32)."""
    return float(emb.detach().float().norm(dim=1).max()) if emb.numel() else 0.0


def check_finite(name: str, value: Tensor) -> None:
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        raise ValueError(f"{name} must be finite; found {value[tuple(bad)].item()} at index {bad}")


def _integer_vector(name: str, value: Tensor | list[int], length: int, device: torch.device):
    value = torch.as_tensor(value, device=device)
    if value.shape != (length,) or value.dtype.is_floating_point or value.dtype.is_complex:
        raise ValueError(
            f"{name} must be a length-{length} integer tensor (one entry per pair); "
            f"got shape {tuple(value.shape)}, dtype {value.dtype}"
        )
    return value


def _check_caption_rows(rows: Tensor, ids: Tensor | None, n_images: int) -> None:
    """Every caption names an existing image row, every image row has a caption, and captions
    of one image share their id."""
    if rows.numel() and not bool((rows >= 0).all() and (rows < n_images).all()):
        bad = rows[(rows < 0) | (rows >= n_images)][0].item()
        raise ValueError(
            f"caption_to_image must index the {n_images} image rows (0 to {n_images - 1}); "
            f"found {bad}"
        )
    used = torch.zeros(n_images, dtype=torch.bool, device=rows.device)
    used[rows] = True
    if not bool(used.all()):
        unused = (~used).nonzero().squeeze(1)[:5].tolist()
        raise ValueError(
            f"every image row needs a caption in caption_to_image; rows {unused} have none "
            "(pass only the images of this batch's captions)"
        )
    if ids is not None:
        low = torch.zeros(n_images, dtype=ids.dtype, device=ids.device)
        high = torch.zeros_like(low)
        low.scatter_reduce_(0, rows, ids, "amin", include_self=False)
        high.scatter_reduce_(0, rows, ids, "amax", include_self=False)
        if bool((low != high).any()):
            image = int((low != high).nonzero()[0])
            raise ValueError(
                f"ids must agree for the captions of one image; image row {image} has captions "
                f"with ids {int(low[image])} and {int(high[image])}"
            )


def pair_index(
    ids: Tensor | list[int] | None,
    caption_to_image: Tensor | list[int] | None,
    n_images: int,
    n_pairs: int,
    device: torch.device,
    check: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """Checked (image row of each pair, id of each pair) of ``n_pairs`` pairs over ``n_images``
    image rows; None where not given."""
    if ids is not None:
        ids = _integer_vector("ids", ids, n_pairs, device)
    if caption_to_image is None:
        return None, ids
    rows = _integer_vector("caption_to_image", caption_to_image, n_pairs, device).long()
    if check:
        _check_caption_rows(rows, ids, n_images)
    return rows, ids


def check_duplicates(
    duplicates: Duplicates | None, n_images: int, n_pairs: int, device: torch.device, check: bool
) -> None:
    """ValueError unless ``duplicates`` holds integer keys of the batch's shapes on ``device``
    (and, with ``check``, no negative caption key)."""
    if duplicates is None:
        return
    expected = {"image_keys": (n_images,), "caption_keys": (n_pairs,)}
    for name, shape in expected.items():
        value = getattr(duplicates, name)
        if value.shape != shape or value.dtype.is_floating_point or value.dtype.is_complex:
            raise ValueError(
                f"duplicates.{name} must be a length-{shape[0]} integer tensor; got shape "
                f"{tuple(value.shape)}, dtype {value.dtype}"
            )
    named = duplicates.image_captions
    if named.dim() != 2 or named.shape[0] != n_images or named.dtype.is_floating_point:
        raise ValueError(
            f"duplicates.image_captions must be an ({n_images}, K) integer tensor; got shape "
            f"{tuple(named.shape)}, dtype {named.dtype}"
        )
    for name, value in zip(("image_keys", "caption_keys", "image_captions"), duplicates.tensors(),
                           strict=True):  # fmt: skip
        if value.device != device:
            raise ValueError(f"duplicates.{name} is on {value.device}; the scores are on {device}")
    if check and duplicates.caption_keys.numel() and int(duplicates.caption_keys.min()) < 0:
        raise ValueError("duplicates.caption_keys must be >= 0 (-1 pads image_captions)")


def prepare_embeddings(
    img_emb: Tensor,
    txt_emb: Tensor,
    ids: Tensor | list[int] | None,
    caption_to_image: Tensor | list[int] | None,
    check: bool | None,
    gather: bool,
    duplicates: Duplicates | None = None,
) -> tuple[Tensor, Tensor, PairIndex]:
    """Checked embeddings in their scoring dtype, gathered over the process group if asked, and
    the pair index of the (possibly gathered) batch."""
    check_floating("img_emb", img_emb)
    check_floating("txt_emb", txt_emb)
    two_dim = img_emb.dim() == 2 and txt_emb.dim() == 2
    if caption_to_image is None and not (two_dim and img_emb.shape == txt_emb.shape):
        raise ValueError(
            "img_emb and txt_emb must both be (B, D) with the same shape; "
            f"got {tuple(img_emb.shape)} and {tuple(txt_emb.shape)}"
        )
    if not (two_dim and img_emb.shape[1] == txt_emb.shape[1]):
        raise ValueError(
            "with caption_to_image, img_emb and txt_emb must be (N, D) and (P, D) with the same "
            f"D; got {tuple(img_emb.shape)} and {tuple(txt_emb.shape)}"
        )
    device = img_emb.device
    check = checks_by_default(device) if check is None else check
    if check:
        check_finite("img_emb", img_emb)
        check_finite("txt_emb", txt_emb)
        # |score| <= |img row| * |txt row|: within range, no score can overflow
        bound = _largest_norm(img_emb) * _largest_norm(txt_emb)
        if bound > MAX_SCORE:
            raise ValueError(
                f"img_emb and txt_emb are too large: their scores can reach {bound:.3g}, "
                f"above {MAX_SCORE:.3g}, where the loss overflows; normalise them"
            )
    rows, ids = pair_index(ids, caption_to_image, img_emb.shape[0], txt_emb.shape[0], device, check)
    check_duplicates(duplicates, img_emb.shape[0], txt_emb.shape[0], device, check)
    img_emb, txt_emb = as_scoring_dtype(img_emb), as_scoring_dtype(txt_emb)
    txt_emb = txt_emb.to(img_emb.dtype)
    if gather and process_group_size() > 1:
        img_emb, txt_emb, rows, ids, duplicates = gather_batch(
            img_emb, txt_emb, rows, ids, duplicates
        )
    if txt_emb.shape[0] < 2:
        raise ValueError(f"img_emb and txt_emb need B >= 2 pairs; got B = {txt_emb.shape[0]}")
    return img_emb, txt_emb, PairIndex.of(rows, ids, duplicates)


def prepare_scores(
    scores: Tensor,
    ids: Tensor | list[int] | None,
    caption_to_image: Tensor | list[int] | None,
    check: bool | None,
    duplicates: Duplicates | None = None,
) -> tuple[Tensor, PairIndex]:
    """Checked (N, P) scores in their scoring dtype and their pair index."""
    check_floating("scores", scores)
    if scores.dim() != 2 or (caption_to_image is None and scores.shape[0] != scores.shape[1]):
        raise ValueError(
            f"scores must be a square (B, B) matrix; got {tuple(scores.shape)} (for N images "
            "and P captions, pass an (N, P) matrix with caption_to_image)"
        )
    check = checks_by_default(scores.device) if check is None else check
    if check:
        check_finite("scores", scores)
        check_score_range("scores", scores)
    rows, ids = pair_index(ids, caption_to_image, *scores.shape, scores.device, check)
    check_duplicates(duplicates, *scores.shape, scores.device, check)
    if scores.shape[1] < 2:
        raise ValueError(f"scores needs B >= 2 pairs; got {tuple(scores.shape)}")
    return as_scoring_dtype(scores), PairIndex.of(rows, ids, duplicates)


def refuse_gathered_scores(gather: bool) -> None:
    """A score matrix is the caller's to gather: the loss cannot know how it was made."""
    if gather and process_group_size() > 1:
        raise ValueError(
            "gather_distributed gathers embeddings; from_scores takes the scores as given "
            "(compute them from gathered embeddings, or call the loss on the embeddings)"
        )
