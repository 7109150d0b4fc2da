"""The losses' own all-gather (``gather_distributed=True``) in 2 gloo processes on the CPU,
against one process on the concatenated batch. The ranks hold different numbers of images and
captions; every rank computes the global batch's loss, the gradient reaching a rank's embeddings
is the sum of every rank's (world size x the single-process gradient), and DDP's average of the
parameter gradients is exactly the single-process gradient."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from selhn import InfoNCELoss, SelHNLoss

pytestmark = [pytest.mark.distributed]


WORLD = 2
LOSSES = {
    "selhn": lambda **kw: SelHNLoss(epsilon=0.3, **kw),
    "infonce": lambda **kw: InfoNCELoss(temperature=0.1, learnable=False, **kw),
}
# rank 0: images 0-2 with 4 captions; rank 1: images 3-6 with 6 captions. Image ids: 11 is on
# both ranks (one image encoded by each), so its captions are never negatives of each other.
IMAGE_IDS = torch.tensor([10, 11, 12, 11, 13, 14, 15])
CAPTION_TO_IMAGE = torch.tensor([0, 1, 2, 0, 3, 4, 5, 6, 3, 5])
RANK_IMAGES = [slice(0, 3), slice(3, 7)]
RANK_CAPTIONS = [slice(0, 4), slice(4, 10)]


def inputs():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    captions = images[CAPTION_TO_IMAGE] + 0.7 * torch.randn(
        10, 5, generator=gen, dtype=torch.float64
    )
    return images, captions


def encoders():
    torch.manual_seed(1)
    return nn.Linear(5, 6).double(), nn.Linear(5, 6).double()


def step(name, images, captions, rows, ids, gather, ddp=False):
    """Loss and gradients (of embeddings and of encoder parameters) of one call."""
    image_encoder, text_encoder = encoders()
    wrap = nn.parallel.DistributedDataParallel if ddp else (lambda module: module)
    networks = wrap(image_encoder), wrap(text_encoder)  # DDP's hooks live as long as these
    img = F.normalize(networks[0](images), dim=1)
    txt = F.normalize(networks[1](captions), dim=1)
    img.retain_grad()
    txt.retain_grad()
    loss_fn = LOSSES[name](gather_distributed=gather, reduction="none")
    terms = loss_fn(img, txt, ids=ids, caption_to_image=rows)
    terms.mean().backward()
    params = {f"{k}.{n}": p.grad for k, m in (("image", image_encoder), ("text", text_encoder))
              for n, p in m.named_parameters()}  # fmt: skip
    return {"terms": terms.detach(), "img": img.grad, "txt": txt.grad, "params": params}


def worker(rank, store, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    images, captions = inputs()
    mine_img, mine_cap = RANK_IMAGES[rank], RANK_CAPTIONS[rank]
    rows = CAPTION_TO_IMAGE[mine_cap] - mine_img.start  # local image rows
    ids = IMAGE_IDS[CAPTION_TO_IMAGE[mine_cap]]
    results = {
        name: step(name, images[mine_img], captions[mine_cap], rows, ids, gather=True, ddp=True)
        for name in LOSSES
    }
    results["plain"] = step("selhn", images[mine_img], captions[mine_cap], rows, ids, gather=False)
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gather")
    mp.spawn(worker, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("name", LOSSES)
def test_gathered_loss_equals_one_process_on_the_whole_batch(ranks, name):
    images, captions = inputs()
    whole = step(name, images, captions, CAPTION_TO_IMAGE, IMAGE_IDS[CAPTION_TO_IMAGE], False)
    for rank in range(WORLD):
        got = ranks[rank][name]
        torch.testing.assert_close(got["terms"], whole["terms"], rtol=1e-10, atol=1e-12)
        own_img, own_cap = RANK_IMAGES[rank], RANK_CAPTIONS[rank]
        torch.testing.assert_close(got["img"], WORLD * whole["img"][own_img], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(got["txt"], WORLD * whole["txt"][own_cap], rtol=1e-9, atol=1e-12)
        for key, grad in whole["params"].items():
            torch.testing.assert_close(got["params"][key], grad, rtol=1e-9, atol=1e-12, msg=key)


def test_without_gathering_each_rank_has_its_own_batch(ranks):
    images, captions = inputs()
    for rank in range(WORLD):
        mine_img, mine_cap = RANK_IMAGES[rank], RANK_CAPTIONS[rank]
        rows = CAPTION_TO_IMAGE[mine_cap] - mine_img.start
        ids = IMAGE_IDS[CAPTION_TO_IMAGE[mine_cap]]
        alone = step("selhn", images[mine_img], captions[mine_cap], rows, ids, gather=False)
        torch.testing.assert_close(ranks[rank]["plain"]["terms"], alone["terms"])


def test_gathering_without_a_process_group_changes_nothing():
    images, captions = inputs()
    ids = IMAGE_IDS[CAPTION_TO_IMAGE]
    gathered = step("selhn", images, captions, CAPTION_TO_IMAGE, ids, gather=True)
    plain = step("selhn", images, captions, CAPTION_TO_IMAGE, ids, gather=False)
    torch.testing.assert_close(gathered["terms"], plain["terms"], rtol=0, atol=0)
    torch.testing.assert_close(gathered["img"], plain["img"], rtol=0, atol=0)
