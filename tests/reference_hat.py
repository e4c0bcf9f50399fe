"""A slow, explicit HAT stage: loops over windows and carrier-token cells, written from the definition.

It shares only the weights with fastvits (linear layers, norms, MLPs), never the layout code, so it
checks window partitioning, carrier-token placement, position-bias geometry and propagation on any
grid, square or not.
"""

import math

import torch


def _log_coords(delta: torch.Tensor, extent: int) -> torch.Tensor:
    t = delta / max(extent - 1, 1) * 8
    return torch.sign(t) * torch.log2(t.abs() + 1) / 3


def relative_bias(mlp, h: int, w: int, dtype) -> torch.Tensor:
    """(heads, h*w, h*w): 16 * sigmoid(MLP(log-spaced (row, col) offset)) for every token pair."""
    pos = [(r, c) for r in range(h) for c in range(w)]
    rows = torch.tensor([[p[0] - q[0] for q in pos] for p in pos], dtype=torch.float32)
    cols = torch.tensor([[p[1] - q[1] for q in pos] for p in pos], dtype=torch.float32)
    # the coordinate table is float32 by definition (the official buffer), whatever the model dtype
    coords = torch.stack([_log_coords(rows, h), _log_coords(cols, w)], dim=-1).to(dtype)
    return (16 * torch.sigmoid(mlp(coords))).permute(2, 0, 1)


def absolute_embedding(mlp, h: int, w: int, dtype) -> torch.Tensor:
    """(h*w, C): MLP((r - h//2) / (h//2), (c - w//2) / (w//2)) for every cell, row-major."""
    coords = [[(r - h // 2) / max(h // 2, 1), (c - w // 2) / max(w // 2, 1)] for r in range(h) for c in range(w)]
    return mlp(torch.tensor(coords, dtype=dtype))


def attention(module, tokens: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Explicit multi-head attention of one sequence (N, C); bias covers the last bias.shape[-1] tokens."""
    N, C = tokens.shape
    h = module.num_heads
    q, k, v = module.qkv(tokens).view(N, 3, h, C // h).permute(1, 2, 0, 3)
    logits = q @ k.transpose(-1, -2) / math.sqrt(C // h)
    n = bias.shape[-1]
    logits[:, N - n :, N - n :] += bias
    out = logits.softmax(-1) @ v  # (h, N, d)
    return module.proj(out.transpose(0, 1).reshape(N, C))


def hat_stage(stage, x: torch.Tensor) -> torch.Tensor:
    """Reference forward of a fastvits HATStage on (B, C, H, W), returning the pre-downsample map."""
    B, C, H, W = x.shape
    blocks = list(stage.blocks)
    w = stage.window_size
    c = blocks[0].ct_size
    gh, gw = -(-H // w), -(-W // w)
    xp = torch.zeros(B, C, gh * w, gw * w, dtype=x.dtype)
    xp[:, :, :H, :W] = x
    use_ct = stage.global_tokenizer is not None and gh * gw > 1
    ct = None
    if use_ct:  # carrier-token grid (B, c*gh, c*gw, C): pooled cells of the depthwise-conv map
        conv = stage.global_tokenizer.pos_embed(xp)
        ct = torch.zeros(B, c * gh, c * gw, C, dtype=x.dtype)
        sh, sw = (gh * w) // (c * gh), (gw * w) // (c * gw)
        kh, kw = gh * w - (c * gh - 1) * sh, gw * w - (c * gw - 1) * sw
        for i in range(c * gh):
            for j in range(c * gw):
                ct[:, i, j] = conv[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw].mean(dim=(2, 3))
    out = xp.clone()
    for blk in blocks:
        new_out = torch.empty_like(out)
        win_pe = absolute_embedding(blk.pos_embed.cpb_mlp, w, w, x.dtype)
        win_bias = relative_bias(blk.attn.rel_pos.cpb_mlp, w, w, x.dtype)
        if use_ct:
            flat = ct.reshape(B, -1, C) + absolute_embedding(blk.hat_pos_embed.cpb_mlp, c * gh, c * gw, x.dtype)
            g1 = 1 if blk.gamma1 is None else blk.gamma1
            g2 = 1 if blk.gamma2 is None else blk.gamma2
            ct_bias = relative_bias(blk.hat_attn.rel_pos.cpb_mlp, c * gh, c * gw, x.dtype)
            for b in range(B):
                flat[b] = flat[b] + g1 * attention(blk.hat_attn, blk.hat_norm1(flat[b]), ct_bias)
            flat = flat + g2 * blk.hat_mlp(blk.hat_norm2(flat))
            ct = flat.reshape(B, c * gh, c * gw, C)
            new_ct = torch.empty_like(ct)
        g3 = 1 if blk.gamma3 is None else blk.gamma3
        g4 = 1 if blk.gamma4 is None else blk.gamma4
        for b in range(B):
            for wy in range(gh):
                for wx in range(gw):
                    tok = out[b, :, wy * w : (wy + 1) * w, wx * w : (wx + 1) * w].reshape(C, -1).T + win_pe
                    if use_ct:
                        own = ct[b, wy * c : (wy + 1) * c, wx * c : (wx + 1) * c].reshape(-1, C)
                        tok = torch.cat([own, tok])
                    tok = tok + g3 * attention(blk.attn, blk.norm1(tok), win_bias)
                    tok = tok + g4 * blk.mlp(blk.norm2(tok))
                    if use_ct:
                        own, tok = tok[: c * c], tok[c * c :]
                        new_ct[b, wy * c : (wy + 1) * c, wx * c : (wx + 1) * c] = own.reshape(c, c, C)
                        if blk.propagate:  # nearest upsampling: token (r, s) takes CT (r*c//w, s*c//w)
                            src = [(r * c // w) * c + (s * c // w) for r in range(w) for s in range(w)]
                            tok = tok + g1 * own[src]
                    new_out[b, :, wy * w : (wy + 1) * w, wx * w : (wx + 1) * w] = tok.T.reshape(C, w, w)
        out = new_out
        if use_ct:
            ct = new_ct
    return out[:, :, :H, :W]
