"""SelHN as a drop-in loss: two linear encoders learn to match noisy views of random items.

Run: .venv/bin/python examples/plug_and_play.py
"""

import torch
import torch.nn.functional as F

from selhn import SelHNLoss

gen = torch.Generator().manual_seed(0)
items = torch.randn(512, 32, generator=gen)
img_view = items @ torch.randn(32, 64, generator=gen) + 0.5 * torch.randn(512, 64, generator=gen)
txt_view = items @ torch.randn(32, 48, generator=gen) + 0.5 * torch.randn(512, 48, generator=gen)

torch.manual_seed(0)
img_enc, txt_enc = torch.nn.Linear(64, 128), torch.nn.Linear(48, 128)
params = [*img_enc.parameters(), *txt_enc.parameters()]
opt = torch.optim.AdamW(params, lr=1e-3)
loss_fn = SelHNLoss(margin=0.2, epsilon=0.01)

for step in range(301):
    batch = torch.randint(0, 512, (64,), generator=gen)
    img_emb = F.normalize(img_enc(img_view[batch]), dim=1)
    txt_emb = F.normalize(txt_enc(txt_view[batch]), dim=1)
    loss = loss_fn(img_emb, txt_emb, ids=batch)  # a repeated item is not its own negative
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 50 == 0:
        s = {k: round(v.item(), 3) for k, v in loss_fn.stats.items()}
        print(f"step {step:3d}  loss {loss.item():.4f}  {s}")

with torch.no_grad():
    sims = F.normalize(img_enc(img_view), dim=1) @ F.normalize(txt_enc(txt_view), dim=1).T
    r1 = (sims.argmax(dim=1) == torch.arange(512)).float().mean().item()
print(f"image->text R@1 over all 512 items: {100 * r1:.1f}%")
