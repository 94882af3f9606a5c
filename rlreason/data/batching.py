"""Token id lists -> padded and packed tensors, for generation and the log-prob passes alike.

Rollout engines and the trainer both build batches from lists of token ids; the helpers for
that live here, below both (this module imports nothing of rlreason, only torch):

- ``left_pad``, ``right_pad``, ``positions_from_mask``: padding, and position ids that skip
  left padding as ``generate`` computes them;
- ``pack``: the padded layout of a log-prob pass, one row ``[prompt | completion]`` per sample;
- ``pack_groups``: prompt-group packing, each prompt once with its completions after it.

Prompt-group packing. GRPO's G completions of a prompt share the prompt. The padded layout (``pack``) runs
every completion as its own row ``[prompt | completion | padding]``, so the prompt's tokens go
through the model G times, forward and backward, and every row is padded to the longest
completion. Packed, a row is ``[prompt | c_1 | c_2 | ... | c_k | padding]`` with a block mask:
the prompt is causal, each completion sees the whole prompt and its own earlier tokens, never
another completion. Positions restart after the prompt for every completion, exactly as in
generation (where the prompt was prefilled once and its KV cache copied G times), so each
completion token's log-prob is the same computation as in the padded layout, up to float
rounding; the gradient reaching the prompt's tokens is the sum over its completions, as it
is when the prompt is repeated. Saved: (G - 1) prompt copies per group and the completion
padding; paid: attention over a longer row (dense masked attention is quadratic in the row).

Rows are capped at ``max_row_tokens``: a group whose completions do not fit is split over
several rows, each starting with the prompt. With ``share_rows`` a group may also start in a
row another group has begun, if it fits there whole (classic sequence packing, as SFT does
with many short examples; ``rlreason.loop.sft``): every token then also carries its group's index,
and attention never crosses groups.

Notation: N completions, P the longest prompt, T the longest completion, R rows, W the row width.
"""

from __future__ import annotations

import torch


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists. -> ids [N, L], attention mask [N, L]."""
    ids, mask = right_pad([s[::-1] for s in seqs], pad_id)
    return ids.flip(1), mask.flip(1)


def right_pad(seqs: list[list], pad_value: float | int, min_width: int = 0,
              dtype: torch.dtype = torch.long) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad lists to one width (at least ``min_width``). -> values [N, W], mask [N, W] (long)."""
    width = max([min_width, *map(len, seqs)])
    values = torch.full((len(seqs), width), pad_value, dtype=dtype)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            values[i, :len(s)] = torch.tensor(s, dtype=dtype)
            mask[i, :len(s)] = 1
    return values, mask


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that ignore left padding, as ``generate`` computes them. [N, L] -> [N, L]"""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def loss_mask(c_mask: torch.Tensor, loss_masks: list[list[int] | None] | None) -> torch.Tensor:
    """``c_mask`` [N, T] (1 on completion tokens) times the samples' loss masks (multi-turn tool
    rollouts: 0 on inserted tool-output tokens; None for a sample = all its tokens the model's)."""
    if loss_masks is None or all(m is None for m in loss_masks):
        return c_mask
    rows = [m if m is not None else [1] * int(n) for m, n in zip(loss_masks, c_mask.sum(1).tolist(), strict=True)]
    return c_mask * right_pad(rows, 0, min_width=c_mask.shape[1])[0]


def pack(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int,
         sampler_logprobs: list[list[float]] | None = None,
         loss_masks: list[list[int] | None] | None = None) -> dict[str, torch.Tensor]:
    """[left-padded prompt | right-padded completion] rows for a log-prob pass.

    -> input_ids, attention_mask, position_ids: [N, P + T]; completion_mask: [N, T];
    sampler_logp: [N, T] if given; plus "prompt_width" P. Positions skip the left padding,
    as in generation, so the trainer scores exactly the computation the sampler did.
    ``loss_masks`` (one per sample, None = all ones): multiplied into completion_mask, so
    inserted tool-output tokens are in the model's input but out of every term of the loss.
    """
    p_ids, p_mask = left_pad(prompt_ids, pad_id)
    c_ids, c_mask = right_pad(completion_ids, pad_id, min_width=1)
    mask = torch.cat([p_mask, c_mask], dim=1)
    out = {
        "input_ids": torch.cat([p_ids, c_ids], dim=1),
        "attention_mask": mask,
        "position_ids": positions_from_mask(mask),
        "completion_mask": loss_mask(c_mask, loss_masks),
        "prompt_width": p_ids.shape[1],
    }
    if sampler_logprobs is not None:
        out["sampler_logp"] = right_pad(sampler_logprobs, 0.0, min_width=c_ids.shape[1], dtype=torch.float32)[0]
    return out


def pack_groups(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int, group_size: int,
                max_row_tokens: int = 4096, sampler_logprobs: list[list[float]] | None = None,
                share_rows: bool = False, loss_masks: list[list[int] | None] | None = None
                ) -> dict[str, torch.Tensor]:
    """Pack N = groups * ``group_size`` samples (groups adjacent, each group sharing one prompt).

    -> input_ids, position_ids: [R, W]; attention_mask: [R, 1, W, W] bool (True = may attend);
    token_mask: [N, T] (1 on completion tokens: the positions scored); completion_mask: [N, T]
    (token_mask times ``loss_masks``, as ``pack``: the tokens the loss covers); completion_ids: [N, T];
    src: [N, T] flat index into the [R * W] positions of the hidden state that predicts each
    completion token (0 on padding); sampler_logp: [N, T] if given.
    """
    n = len(completion_ids)
    if n % group_size or len(prompt_ids) != n:
        raise ValueError(f"{n} completions and {len(prompt_ids)} prompts are not whole groups of {group_size}")
    rows: list[list[int]] = []  # token ids
    segs: list[list[int]] = []  # 0: prompt, k >= 1: k-th completion of the row's group
    grps: list[list[int]] = []  # the group each token belongs to
    pos: list[list[int]] = []
    where: list[tuple[int, int, int]] = []  # per sample: (row, start in row, row index of its prompt's last token)
    for g in range(0, n, group_size):
        prompt = prompt_ids[g]
        if any(prompt_ids[i] != prompt for i in range(g, g + group_size)):
            raise ValueError("pack_groups: the samples of a group must share their prompt")
        if not prompt:
            raise ValueError("pack_groups: empty prompt")
        P = len(prompt)
        whole = P + sum(len(completion_ids[i]) for i in range(g, g + group_size))
        shared = share_rows and rows and len(rows[-1]) + whole <= max_row_tokens
        row, n_in_row, prompt_end = None, 0, -1
        for i in range(g, g + group_size):
            c = completion_ids[i]
            if row is None or (len(rows[row]) + len(c) > max_row_tokens and n_in_row > 0):
                if not (row is None and shared):  # a new row, unless the whole group fits the last one
                    for lst in (rows, segs, grps, pos):
                        lst.append([])
                row, n_in_row = len(rows) - 1, 0
                prompt_end = len(rows[row]) + P - 1
                rows[row].extend(prompt)
                segs[row].extend([0] * P)
                grps[row].extend([g] * P)
                pos[row].extend(range(P))
            n_in_row += 1
            where.append((row, len(rows[row]), prompt_end))
            rows[row].extend(c)
            segs[row].extend([n_in_row] * len(c))
            grps[row].extend([g] * len(c))
            pos[row].extend(range(P, P + len(c)))
    ids, valid = right_pad(rows, pad_id)
    W = ids.shape[1]
    seg = right_pad(segs, -1)[0]
    grp = right_pad(grps, -1)[0]
    position_ids = right_pad(pos, 0)[0]
    idx = torch.arange(W)
    causal = idx[None, :] <= idx[:, None]  # [q, k]
    seg_q, seg_k = seg[:, :, None], seg[:, None, :]
    same_group = grp[:, :, None] == grp[:, None, :]
    attend = causal & same_group & ((seg_k == 0) | (seg_k == seg_q)) & (seg_q >= 0) & (seg_k >= 0)
    attend |= torch.eye(W, dtype=torch.bool)  # padding queries see themselves: no empty softmax row
    c_ids, c_mask = right_pad(completion_ids, pad_id, min_width=1)
    T = c_ids.shape[1]
    src = torch.zeros((n, T), dtype=torch.long)
    for i, (r, start, prompt_end) in enumerate(where):
        L = len(completion_ids[i])
        if L:
            # token t is predicted at row position start + t - 1; the first by the prompt's last token
            flat = torch.arange(start - 1, start + L - 1)
            flat[0] = prompt_end
            src[i, :L] = r * W + flat
    out = {"input_ids": ids, "attention_mask": attend.unsqueeze(1), "position_ids": position_ids,
           "completion_ids": c_ids, "completion_mask": loss_mask(c_mask, loss_masks), "token_mask": c_mask.clone(),
           "src": src,
           "row_tokens": valid}
    if sampler_logprobs is not None:
        out["sampler_logp"] = right_pad(sampler_logprobs, 0.0, min_width=T, dtype=torch.float32)[0]
    return out


def supports_packing(model) -> bool:
    """Whether the model takes a custom 4D attention mask: transformers' sdpa and eager
    attention do (a prepared 4D mask is used as given); flash-attention kernels do not."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "_attn_implementation", None) in ("sdpa", "eager")


def model_attention_mask(model, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The bool block mask as the model's attention wants it: bool for sdpa, additive for eager."""
    if getattr(getattr(model, "config", None), "_attn_implementation", None) == "eager":
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask
