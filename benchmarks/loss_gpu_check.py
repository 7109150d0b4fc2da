"""The losses on a CUDA device under autocast (float16 and bfloat16), checked against float32 on
the CPU, and their forward + backward run with CUDA's synchronisation debug mode set to "error"
(any host synchronisation raises). Prints one line per check and exits non-zero on a failure.

Usage: python benchmarks/loss_gpu_check.py [--device cuda]   (--device cpu: a smoke run of the
value checks, without the synchronisation check)
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from selhn import AllNegativesLoss, HardestNegativeLoss, InfoNCELoss, SelHNLoss

LOSSES = {
    "selhn": lambda: SelHNLoss(epsilon=0.1),
    "hardest": HardestNegativeLoss,
    "all": AllNegativesLoss,
    "infonce": lambda: InfoNCELoss(temperature=0.1, learnable=False),
}


def embeddings(batch: int = 256, dim: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs close enough that SelHN takes both branches; 4 captions per image for the
    multi-caption form."""
    gen = torch.Generator().manual_seed(0)
    img = torch.randn(batch // 4, dim, generator=gen)
    owner = torch.arange(batch // 4).repeat_interleave(4)
    txt = img[owner] + 1.5 * torch.randn(batch, dim, generator=gen)
    return F.normalize(img, dim=1), F.normalize(txt, dim=1), owner


def value_and_grads(fn, *inputs):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    value = fn(*leaves)
    value.backward()
    return value.detach(), [x.grad for x in leaves]


def check_autocast(device: torch.device, dtype: torch.dtype, name: str) -> list[str]:
    """Problems found (none: an empty list) for one loss in one low-precision dtype."""
    img, txt, owner = embeddings()
    img, txt = img.to(dtype), txt.to(dtype)  # already low precision, as a model's outputs are
    loss = LOSSES[name]()
    forms = {
        "embeddings": (lambda a, b: loss(a, b, caption_to_image=owner.to(a.device)), (img, txt)),
        "scores": (
            lambda s: loss.from_scores(s, caption_to_image=owner.to(s.device)),
            ((img.float() @ txt.float().T).to(dtype),),
        ),
    }
    problems = []
    for form, (call, inputs) in forms.items():
        want, want_grads = value_and_grads(call, *(x.float() for x in inputs))  # CPU float32

        def in_autocast(*leaves, call=call):
            with torch.autocast(device.type, dtype=dtype):
                return call(*leaves)

        got, grads = value_and_grads(in_autocast, *(x.to(device) for x in inputs))
        if got.dtype != torch.float32:
            problems.append(f"{form}: loss dtype {got.dtype}")
        if not torch.allclose(got.cpu(), want, rtol=1e-5, atol=1e-6):
            problems.append(f"{form}: loss {got.item():.7f} vs float32 {want.item():.7f}")
        for grad, ref in zip(grads, want_grads, strict=True):
            if grad.dtype != dtype:
                problems.append(f"{form}: gradient dtype {grad.dtype}")
            error = (grad.float().cpu() - ref).abs().max().item()
            if error > 1e-2 * ref.abs().max().item():
                problems.append(f"{form}: gradient off by {error:.2e}")
    if name == "selhn":
        share = loss.stats["vanishing_i2t"].item()
        if not 0 < share < 1:
            problems.append(f"inputs do not exercise both branches (mean-branch share {share})")
    return problems


def check_no_synchronisation(device: torch.device, name: str) -> str | None:
    """An error message if the loss's forward + backward synchronises with the device."""
    img, txt, owner = (x.to(device) for x in embeddings())
    img.requires_grad_()
    txt.requires_grad_()
    loss = LOSSES[name]().to(device)
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss(img[owner], txt).backward()
        loss(img, txt, caption_to_image=owner).backward()
    except RuntimeError as error:
        return str(error).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    device = torch.device(parser.parse_args().device)
    failures = 0
    for dtype in (torch.float16, torch.bfloat16):
        for name in LOSSES:
            problems = check_autocast(device, dtype, name)
            failures += bool(problems)
            status = "FAIL " + "; ".join(problems) if problems else "ok"
            print(f"loss autocast {str(dtype)[6:]:8s} {name:8s} {status}", flush=True)
    if device.type == "cuda":
        for name in LOSSES:
            problem = check_no_synchronisation(device, name)
            failures += problem is not None
            print(f"loss without host synchronisation {name:8s} {problem or 'ok'}", flush=True)
    print(f"loss checks: {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
