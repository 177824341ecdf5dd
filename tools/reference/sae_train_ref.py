"""The official training step (`models/swapping_autoencoder_model.py` with its optimizer), written
from a description of the official code (`../shared/spec`) on top of `sae_ref`.

Everything random is passed in: crop draws (`(flip, scale, offset)` of `sae_ref.draw_crop_params`
for the whole batch, row `i*num_crops + j` = crop j of image i) and generator noise (a dict
{NoiseInjection path relative to G: [rows, 1, h, w]} per G call, rows = that call's batch).

Multi-GPU semantics (as under the official `nn.DataParallel`): the batch is split into
`num_chunks` contiguous chunks, each chunk computes every loss on its own (its own `swap`, its own
first-half reconstruction, its own crops), the per-sample loss vectors are concatenated, then
averaged. The functions below literally loop over the chunks, so they are an independent check of
a port that does the same with index arithmetic.

The R1 penalty uses `torch.autograd.grad(..., create_graph=True)`: this is the double-backward
oracle the Rust hand-written input-VJPs are tested against.
"""

import torch
import torch.nn.functional as F

import sae_ref as R


def swap(x):
    """[x0, x1, x2, x3, ...] -> [x1, x0, x3, x2, ...] (official SwappingAutoencoderModel.swap)."""
    b = x.shape[0]
    assert b % 2 == 0, f"swap needs an even batch, got {b}"
    return x.view(b // 2, 2, *x.shape[1:]).flip(1).view(x.shape)


def gan_loss(pred, should_be_real):
    """Non-saturating logistic loss, averaged per sample -> [bs]."""
    bs = pred.size(0)
    loss = F.softplus(-pred) if should_be_real else F.softplus(pred)
    return loss.view(bs, -1).mean(dim=1)


def _rows(draws, lo, hi):
    return tuple(t[lo:hi] for t in draws)


def _noise_rows(noise, lo, hi):
    return None if noise is None else {k: v[lo:hi] for k, v in noise.items()}


def _g(G, sp, gl, noise):
    """G with the given fixed noise, or fresh random noise when `noise` is None."""
    if noise is None:
        for m in G.modules():
            if isinstance(m, R.NoiseInjection):
                m.fixed_noise = None
    else:
        G.set_fixed_noise(noise)
    return G(sp, gl)


def _crops(x, cfg, draws):
    return R.apply_random_crop(x, cfg["patch_size"], cfg["patch_num_crops"], *draws)


def _chunks(batch, cfg):
    n = cfg["num_chunks"]
    assert batch % n == 0 and (batch // n) % 2 == 0, "each chunk needs an even batch"
    m = batch // n
    return [(c * m, (c + 1) * m) for c in range(n)], m


def _finish(parts, weights):
    return {k: torch.cat(v).mean() * weights[k] for k, v in parts.items()}


def d_step_losses(E, G, D, P, real, cfg, crops, noise=(None, None)):
    """crops: 3 draws (reference, target, mix); noise: 2 dicts (rec [B/2], mix [B]) or None
    for fresh noise."""
    t = cfg["patch_num_crops"]
    chunks, m = _chunks(real.shape[0], cfg)
    parts = {k: [] for k in ("D_real", "D_rec", "D_mix", "PatchD_real", "PatchD_mix")}
    for lo, hi in chunks:
        x = real[lo:hi]
        with torch.no_grad():
            sp, gl = E(x)
            h = m // 2
            rec = _g(G, sp[:h], gl[:h], _noise_rows(noise[0], lo // 2, lo // 2 + h))
            mix = _g(G, swap(sp), gl, _noise_rows(noise[1], lo, hi))
        parts["D_real"].append(gan_loss(D(x), True))
        parts["D_rec"].append(gan_loss(D(rec), False))
        parts["D_mix"].append(gan_loss(D(mix), False))
        agg = cfg["patch_use_aggregation"]
        ref = P.extract_features(_crops(x, cfg, _rows(crops[0], lo * t, hi * t)), aggregate=agg)
        tgt = P.extract_features(_crops(x, cfg, _rows(crops[1], lo * t, hi * t)))
        fake = P.extract_features(_crops(mix, cfg, _rows(crops[2], lo * t, hi * t)))
        parts["PatchD_real"].append(gan_loss(P.discriminate_features(ref, tgt), True))
        parts["PatchD_mix"].append(gan_loss(P.discriminate_features(ref, fake), False))
    lg, lp = cfg["lambda_GAN"], cfg["lambda_PatchGAN"]
    return _finish(parts, {"D_real": lg, "D_rec": 0.5 * lg, "D_mix": 0.5 * lg,
                           "PatchD_real": lp, "PatchD_mix": lp})


def r1_losses(D, P, real, cfg, crops):
    """crops: 2 draws (reference, target). Returns {D_R1, PatchD_R1}, each already x R1_once_every."""
    t = cfg["patch_num_crops"]
    chunks, m = _chunks(real.shape[0], cfg)
    parts = {"D_R1": [], "PatchD_R1": []}
    for lo, hi in chunks:
        x = real[lo:hi].detach().requires_grad_()
        (gx,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
        parts["D_R1"].append(gx.pow(2).reshape(m, -1).sum(1) * (cfg["lambda_R1"] * 0.5))
        rc = _crops(real[lo:hi], cfg, _rows(crops[0], lo * t, hi * t)).detach().requires_grad_()
        tc = _crops(real[lo:hi], cfg, _rows(crops[1], lo * t, hi * t)).detach().requires_grad_()
        p = P.discriminate_features(
            P.extract_features(rc, aggregate=cfg["patch_use_aggregation"]),
            P.extract_features(tc)).sum()
        gr, gt = torch.autograd.grad(p, [rc, tc], create_graph=True)
        pen = gr.pow(2).reshape(m, -1).sum(1) + gt.pow(2).reshape(m, -1).sum(1)
        parts["PatchD_R1"].append(pen * (0.5 * cfg["lambda_patch_R1"] * 0.5))
    k = cfg["R1_once_every"]
    return _finish(parts, {"D_R1": k, "PatchD_R1": k})


def g_step_losses(E, G, D, P, real, cfg, crops, noise=(None, None)):
    """crops: 2 draws (reference, mix); noise: 2 dicts (rec [B/2], mix [B]).
    D and P must not require grad (the caller freezes them)."""
    t = cfg["patch_num_crops"]
    chunks, m = _chunks(real.shape[0], cfg)
    parts = {k: [] for k in ("G_L1", "G_GAN_rec", "G_GAN_mix", "G_mix")}
    for lo, hi in chunks:
        x = real[lo:hi]
        sp, gl = E(x)
        h = m // 2
        rec = _g(G, sp[:h], gl[:h], _noise_rows(noise[0], lo // 2, lo // 2 + h))
        # F.l1_loss is a scalar per GPU; DataParallel gathers one per chunk (equal chunks, so
        # their mean is the mean over all elements).
        parts["G_L1"].append(F.l1_loss(rec, x[:h]).reshape(1))
        mix = _g(G, swap(sp), gl, _noise_rows(noise[1], lo, hi))
        parts["G_GAN_rec"].append(gan_loss(D(rec), True))
        parts["G_GAN_mix"].append(gan_loss(D(mix), True))
        agg = cfg["patch_use_aggregation"]
        ref = P.extract_features(_crops(x, cfg, _rows(crops[0], lo * t, hi * t)),
                                 aggregate=agg).detach()
        fake = P.extract_features(_crops(mix, cfg, _rows(crops[1], lo * t, hi * t)))
        parts["G_mix"].append(gan_loss(P.discriminate_features(ref, fake), True))
    lg = cfg["lambda_GAN"]
    return _finish(parts, {"G_L1": cfg["lambda_L1"], "G_GAN_rec": 0.5 * lg,
                           "G_GAN_mix": 1.0 * lg, "G_mix": cfg["lambda_PatchGAN"]})


def optimizers(E, G, D, P, cfg):
    """The two Adams of the official SwappingAutoencoderOptimizer (D's with the lazy-R1 correction
    c = k/(k+1))."""
    c = cfg["R1_once_every"] / (1 + cfg["R1_once_every"])
    b1, b2 = cfg["beta1"], cfg["beta2"]
    opt_g = torch.optim.Adam(list(G.parameters()) + list(E.parameters()), lr=cfg["lr"],
                             betas=(b1, b2), eps=1e-8)
    opt_d = torch.optim.Adam(list(D.parameters()) + list(P.parameters()), lr=cfg["lr"] * c,
                             betas=(b1 ** c, b2 ** c), eps=1e-8)
    return opt_g, opt_d
