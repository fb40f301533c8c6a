# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""An independent float64 CompVis LDM for the tests: random weights with the real key names, the U-Net
forward pass, the VQ decoder, and the published DDIM sampler with the T-Stitch switch.

Written from the architecture's description (CompVis ``openaimodel.UNetModel`` with spatial transformers,
the taming-style VQ decoder, ``DDIMSampler.p_sample_ddim``); no tstitch or diffusers code is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class UNetSpec:
    """A CompVis U-Net's hyper-parameters (the YAML's ``unet_config.params``)."""

    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention: tuple[bool, ...] = (True, True)  # per level (ds in attention_resolutions)
    num_head_channels: int = 32
    context_dim: int = 16
    transformer_depth: int = 1
    in_channels: int = 4
    out_channels: int = 4
    use_scale_shift_norm: bool = False
    use_linear: bool = False


class _Weights:
    def __init__(self, seed: int, device: str = "cpu"):
        self.gen = torch.Generator().manual_seed(seed)
        self.sd: dict[str, torch.Tensor] = {}
        self.meta = device == "meta"

    def tensor(self, name: str, *shape: int, scale: float = 1.0) -> None:
        if self.meta:
            self.sd[name] = torch.empty(shape, device="meta")
            return
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        self.sd[name] = torch.randn(shape, generator=self.gen) * scale / math.sqrt(fan_in)

    def conv(self, name: str, out_ch: int, in_ch: int, k: int) -> None:
        self.tensor(f"{name}.weight", out_ch, in_ch, k, k)
        self.tensor(f"{name}.bias", out_ch, scale=0.1)

    def linear(self, name: str, out_f: int, in_f: int, bias: bool = True) -> None:
        self.tensor(f"{name}.weight", out_f, in_f)
        if bias:
            self.tensor(f"{name}.bias", out_f, scale=0.1)

    def norm(self, name: str, ch: int) -> None:
        if self.meta:
            self.tensor(f"{name}.weight", ch)
            self.tensor(f"{name}.bias", ch)
            return
        self.sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(ch, generator=self.gen)
        self.sd[f"{name}.bias"] = 0.1 * torch.randn(ch, generator=self.gen)


def random_unet_state_dict(spec: UNetSpec, seed: int = 0, device: str = "cpu") -> dict[str, torch.Tensor]:
    """CompVis U-Net weights (names without the ``model.diffusion_model.`` prefix), random, non-zero;
    ``device="meta"`` for shapes only."""
    w = _Weights(seed, device)
    mc, emb = spec.model_channels, 4 * spec.model_channels
    w.linear("time_embed.0", emb, mc)
    w.linear("time_embed.2", emb, emb)
    w.conv("input_blocks.0.0", mc, spec.in_channels, 3)

    def res(name: str, cin: int, cout: int) -> None:
        w.norm(f"{name}.in_layers.0", cin)
        w.conv(f"{name}.in_layers.2", cout, cin, 3)
        w.linear(f"{name}.emb_layers.1", 2 * cout if spec.use_scale_shift_norm else cout, emb)
        w.norm(f"{name}.out_layers.0", cout)
        w.conv(f"{name}.out_layers.3", cout, cout, 3)
        if cin != cout:
            w.conv(f"{name}.skip_connection", cout, cin, 1)

    def spatial(name: str, ch: int) -> None:
        w.norm(f"{name}.norm", ch)
        if spec.use_linear:
            w.linear(f"{name}.proj_in", ch, ch)
            w.linear(f"{name}.proj_out", ch, ch)
        else:
            w.conv(f"{name}.proj_in", ch, ch, 1)
            w.conv(f"{name}.proj_out", ch, ch, 1)
        for d in range(spec.transformer_depth):
            b = f"{name}.transformer_blocks.{d}"
            for attn, kv_dim in (("attn1", ch), ("attn2", spec.context_dim)):
                w.linear(f"{b}.{attn}.to_q", ch, ch, bias=False)
                w.linear(f"{b}.{attn}.to_k", ch, kv_dim, bias=False)
                w.linear(f"{b}.{attn}.to_v", ch, kv_dim, bias=False)
                w.linear(f"{b}.{attn}.to_out.0", ch, ch)
            for n in ("norm1", "norm2", "norm3"):
                w.norm(f"{b}.{n}", ch)
            w.linear(f"{b}.ff.net.0.proj", 8 * ch, ch)  # GEGLU: 2 x (4 x ch)
            w.linear(f"{b}.ff.net.2", ch, 4 * ch)

    index, ch, skips = 1, mc, [mc]
    for level, mult in enumerate(spec.channel_mult):
        for _ in range(spec.num_res_blocks):
            res(f"input_blocks.{index}.0", ch, mult * mc)
            ch = mult * mc
            if spec.attention[level]:
                spatial(f"input_blocks.{index}.1", ch)
            skips.append(ch)
            index += 1
        if level != len(spec.channel_mult) - 1:
            w.conv(f"input_blocks.{index}.0.op", ch, ch, 3)
            skips.append(ch)
            index += 1
    res("middle_block.0", ch, ch)
    spatial("middle_block.1", ch)
    res("middle_block.2", ch, ch)
    index = 0
    for level in reversed(range(len(spec.channel_mult))):
        for i in range(spec.num_res_blocks + 1):
            cout = spec.channel_mult[level] * mc
            res(f"output_blocks.{index}.0", ch + skips.pop(), cout)
            ch = cout
            layer = 1
            if spec.attention[level]:
                spatial(f"output_blocks.{index}.1", ch)
                layer = 2
            if level and i == spec.num_res_blocks:
                w.conv(f"output_blocks.{index}.{layer}.conv", ch, ch, 3)
            index += 1
    w.norm("out.0", ch)
    w.conv("out.2", spec.out_channels, mc, 3)
    return w.sd


def unet_forward(
    sd: dict[str, torch.Tensor], spec: UNetSpec, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor
) -> torch.Tensor:
    """The CompVis U-Net forward pass in float64."""
    p = {k: v.double() for k, v in sd.items()}
    x, context = x.double(), context.double()

    def lin(h, name):
        return F.linear(h, p[f"{name}.weight"], p.get(f"{name}.bias"))

    def conv(h, name, stride=1):
        weight = p[f"{name}.weight"]
        return F.conv2d(h, weight, p[f"{name}.bias"], stride=stride, padding=weight.shape[-1] // 2)

    def gn(h, name, eps):
        return F.group_norm(h, 32, p[f"{name}.weight"], p[f"{name}.bias"], eps=eps)

    def ln(h, name):
        return F.layer_norm(h, h.shape[-1:], p[f"{name}.weight"], p[f"{name}.bias"], eps=1e-5)

    half = spec.model_channels // 2  # features [cos, sin], frequencies exp(-ln(10000) * i / half)
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    args = t.double()[:, None] * freqs[None]
    temb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    emb = lin(F.silu(lin(temb, "time_embed.0")), "time_embed.2")

    def res(h, name):
        out = conv(F.silu(gn(h, f"{name}.in_layers.0", 1e-5)), f"{name}.in_layers.2")
        e = lin(F.silu(emb), f"{name}.emb_layers.1")[:, :, None, None]
        if spec.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            out = gn(out, f"{name}.out_layers.0", 1e-5) * (1 + scale) + shift
        else:
            out = gn(out + e, f"{name}.out_layers.0", 1e-5)
        out = conv(F.silu(out), f"{name}.out_layers.3")
        skip = conv(h, f"{name}.skip_connection") if f"{name}.skip_connection.weight" in p else h
        return skip + out

    def attention(q_in, kv_in, name, heads):
        q, k, v = lin(q_in, f"{name}.to_q"), lin(kv_in, f"{name}.to_k"), lin(kv_in, f"{name}.to_v")
        b, n, c = q.shape
        d = c // heads
        q, k, v = (a.reshape(b, -1, heads, d).transpose(1, 2) for a in (q, k, v))
        weights = torch.softmax(q @ k.transpose(-1, -2) * d**-0.5, dim=-1)
        return lin((weights @ v).transpose(1, 2).reshape(b, n, c), f"{name}.to_out.0")

    def spatial(h, name):
        b, c, height, width = h.shape
        heads = c // spec.num_head_channels
        y = gn(h, f"{name}.norm", 1e-6)
        if spec.use_linear:
            y = lin(y.flatten(2).transpose(1, 2), f"{name}.proj_in")
        else:
            y = conv(y, f"{name}.proj_in").flatten(2).transpose(1, 2)
        for dpt in range(spec.transformer_depth):
            blk = f"{name}.transformer_blocks.{dpt}"
            n1 = ln(y, f"{blk}.norm1")
            y = attention(n1, n1, f"{blk}.attn1", heads) + y
            y = attention(ln(y, f"{blk}.norm2"), context, f"{blk}.attn2", heads) + y
            a, gate = lin(ln(y, f"{blk}.norm3"), f"{blk}.ff.net.0.proj").chunk(2, dim=-1)
            y = lin(a * F.gelu(gate), f"{blk}.ff.net.2") + y
        if spec.use_linear:
            y = lin(y, f"{name}.proj_out").transpose(1, 2).reshape(b, c, height, width)
        else:
            y = conv(y.transpose(1, 2).reshape(b, c, height, width), f"{name}.proj_out")
        return y + h

    def run_block(h, prefix):
        for j in range(4):
            name = f"{prefix}.{j}"
            if f"{name}.in_layers.0.weight" in p:
                h = res(h, name)
            elif f"{name}.norm.weight" in p:
                h = spatial(h, name)
            elif f"{name}.op.weight" in p:
                h = conv(h, f"{name}.op", stride=2)
            elif f"{name}.conv.weight" in p:
                h = conv(F.interpolate(h, scale_factor=2, mode="nearest"), f"{name}.conv")
        return h

    h = conv(x, "input_blocks.0.0")
    hs = [h]
    n_in = len({k.split(".")[1] for k in p if k.startswith("input_blocks.")})
    for i in range(1, n_in):
        h = run_block(h, f"input_blocks.{i}")
        hs.append(h)
    h = run_block(h, "middle_block")
    n_out = len({k.split(".")[1] for k in p if k.startswith("output_blocks.")})
    for i in range(n_out):
        h = run_block(torch.cat([h, hs.pop()], dim=1), f"output_blocks.{i}")
    return conv(F.silu(gn(h, "out.0", 1e-5)), "out.2")


# -- VQ first stage ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VQSpec:
    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention: tuple[bool, ...] = (False, True)  # per level (curr_res in attn_resolutions)
    z_channels: int = 4
    embed_dim: int = 4
    n_embed: int = 16
    in_channels: int = 3
    out_ch: int = 3


def random_vq_state_dict(spec: VQSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """CompVis ``VQModel`` weights (encoder, decoder, codebook, the 1x1 convs, and a ``loss.*`` entry)."""
    w = _Weights(seed)

    def res(name, cin, cout):
        w.norm(f"{name}.norm1", cin)
        w.conv(f"{name}.conv1", cout, cin, 3)
        w.norm(f"{name}.norm2", cout)
        w.conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            w.conv(f"{name}.nin_shortcut", cout, cin, 1)

    def attn(name, ch):
        w.norm(f"{name}.norm", ch)
        for part in ("q", "k", "v", "proj_out"):
            w.conv(f"{name}.{part}", ch, ch, 1)

    widths = [spec.ch * m for m in spec.ch_mult]
    w.conv("encoder.conv_in", spec.ch, spec.in_channels, 3)
    ch = spec.ch
    for level, width in enumerate(widths):
        for j in range(spec.num_res_blocks):
            res(f"encoder.down.{level}.block.{j}", ch, width)
            ch = width
            if spec.attention[level]:
                attn(f"encoder.down.{level}.attn.{j}", ch)
        if level != len(widths) - 1:
            w.conv(f"encoder.down.{level}.downsample.conv", ch, ch, 3)
    for part in ("encoder", "decoder"):
        if part == "decoder":
            w.conv("decoder.conv_in", ch, spec.z_channels, 3)
        res(f"{part}.mid.block_1", ch, ch)
        attn(f"{part}.mid.attn_1", ch)
        res(f"{part}.mid.block_2", ch, ch)
        if part == "encoder":
            w.norm("encoder.norm_out", ch)
            w.conv("encoder.conv_out", spec.z_channels, ch, 3)
    for level in reversed(range(len(widths))):
        for j in range(spec.num_res_blocks + 1):
            res(f"decoder.up.{level}.block.{j}", ch, widths[level])
            ch = widths[level]
            if spec.attention[level]:
                attn(f"decoder.up.{level}.attn.{j}", ch)
        if level:
            w.conv(f"decoder.up.{level}.upsample.conv", ch, ch, 3)
    w.norm("decoder.norm_out", ch)
    w.conv("decoder.conv_out", spec.out_ch, ch, 3)
    w.tensor("quantize.embedding.weight", spec.n_embed, spec.embed_dim, scale=math.sqrt(spec.embed_dim))
    w.conv("quant_conv", spec.embed_dim, spec.z_channels, 1)
    w.conv("post_quant_conv", spec.z_channels, spec.embed_dim, 1)
    w.tensor("loss.discriminator.main.0.weight", 8, 3, 4, 4)
    return w.sd


def vq_decode(sd: dict[str, torch.Tensor], spec: VQSpec, z: torch.Tensor) -> torch.Tensor:
    """Quantize ``z`` to the nearest codebook entries, then decode, in float64."""
    p = {k: v.double() for k, v in sd.items()}
    z = z.double()
    book = p["quantize.embedding.weight"]
    flat = z.permute(0, 2, 3, 1).reshape(-1, book.shape[1])
    nearest = torch.cdist(flat, book).argmin(dim=1)
    h = book[nearest].reshape(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)

    def conv(h, name):
        weight = p[f"{name}.weight"]
        return F.conv2d(h, weight, p[f"{name}.bias"], padding=weight.shape[-1] // 2)

    def gn(h, name):
        return F.group_norm(h, 32, p[f"{name}.weight"], p[f"{name}.bias"], eps=1e-6)

    def res(h, name):
        out = conv(F.silu(gn(h, f"{name}.norm1")), f"{name}.conv1")
        out = conv(F.silu(gn(out, f"{name}.norm2")), f"{name}.conv2")
        return (conv(h, f"{name}.nin_shortcut") if f"{name}.nin_shortcut.weight" in p else h) + out

    def attn(h, name):
        b, c, hh, ww = h.shape
        y = gn(h, f"{name}.norm")
        q, k, v = (conv(y, f"{name}.{x}").reshape(b, c, -1) for x in "qkv")
        weights = torch.softmax(q.transpose(1, 2) @ k * c**-0.5, dim=-1)  # (b, queries, keys)
        out = (v @ weights.transpose(1, 2)).reshape(b, c, hh, ww)
        return h + conv(out, f"{name}.proj_out")

    h = conv(conv(h, "post_quant_conv"), "decoder.conv_in")
    h = res(attn(res(h, "decoder.mid.block_1"), "decoder.mid.attn_1"), "decoder.mid.block_2")
    for level in reversed(range(len(spec.ch_mult))):
        for j in range(spec.num_res_blocks + 1):
            h = res(h, f"decoder.up.{level}.block.{j}")
            if spec.attention[level]:
                h = attn(h, f"decoder.up.{level}.attn.{j}")
        if level:
            h = conv(F.interpolate(h, scale_factor=2, mode="nearest"), f"decoder.up.{level}.upsample.conv")
    return conv(F.silu(gn(h, "decoder.norm_out")), "decoder.conv_out")


# -- the published sampler -----------------------------------------------------------------------------------


def compvis_alphas_cumprod(num_train_timesteps: int = 1000) -> torch.Tensor:
    """``cumprod(1 - linspace(0.0015 ** 0.5, 0.0195 ** 0.5, T) ** 2)`` in float64."""
    betas = torch.linspace(0.0015**0.5, 0.0195**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


def reference_ldm_sample(models, contexts, unconditionals, noise, step_noises, fraction, steps, eta, scale):
    """Two-model T-Stitch DDIM written from the description, in float64.

    ``models[i](x, t, context)`` returns epsilon; ``contexts[i]`` / ``unconditionals[i]`` are model ``i``'s
    own ``(B, 1, d_i)`` contexts; ``step_noises[k]`` is the noise of the ``k``-th step. Returns the final
    latent and the model index used at every step.
    """
    abar = compvis_alphas_cumprod()
    selected = list(range(0, 1000, 1000 // steps))
    x = noise.double()
    used = []
    for k, step in enumerate(reversed(selected)):
        t = step + 1
        i = 0 if t / 1000 > 1 - fraction else 1
        used.append(i)
        a_t = abar[t]
        position = selected.index(step)
        a_prev = abar[selected[position - 1] + 1] if position > 0 else abar[0]
        ts = torch.full((2 * x.shape[0],), t)
        out = models[i](torch.cat([x, x]), ts, torch.cat([unconditionals[i], contexts[i]])).double()
        e_u, e_c = out.chunk(2)
        e = e_u + scale * (e_c - e_u)
        sigma = eta * torch.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        x0 = (x - torch.sqrt(1 - a_t) * e) / torch.sqrt(a_t)
        x = torch.sqrt(a_prev) * x0 + torch.sqrt(1 - a_prev - sigma**2) * e + sigma * step_noises[k].double()
    return x, used
