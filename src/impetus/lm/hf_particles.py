"""Power-SMC's particles in one decoding loop of the HF backend (``ParticleSampler.sample_particles``).

Why a loop of its own: grown through ``continue_rows`` one block at a time, every particle's KV cache
is stacked into a fresh batch and copied back out at every block, each problem's prompt is encoded
on its own, and each round waits for its slowest row; on the default testbed that made Power-SMC
3.2–3.8× plain sampling (docs/results.md, "Issue 27, third part"). Here
- a problem's particles are rows of one batch, prefilled as the sampler prefills a prompt's samples
  (the few-shot prefix once and, on CPU, attended apart as in ``generate``; each prompt once, gathered
  into its rows);
- they decode one token per step in lockstep, so after every ``block`` steps all of a problem's
  unfinished particles sit at a boundary together, and resampling copies the ancestors' cache rows
  onto the rows that change, in place (:func:`impetus.lm.kv_cache.copy_rows`), with their records;
- a finished particle keeps its slot (fed a dummy token) until its problem ends, because resampling
  may copy a live particle onto it; a finished problem's slots are dropped, and waiting problems
  join whole as room frees (continuous batching, as in :mod:`impetus.lm.hf_sampler`).
Each particle's generator is reseeded at each block it starts, so it draws what ``continue_rows``
would draw for that block (:class:`impetus.lm.sampler.ParticleSampler`'s contract).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch.profiler import record_function

from impetus.lm.kv_cache import copy_rows, forward, mergeable, out_cache, stack_caches
from impetus.lm.nucleus import sample_tokens
from impetus.lm.recording import RowRecord, last_state_hook, layer_state_hook, tempered_lse
from impetus.lm.rows import CallOptions, Row, advance, pooled_record
from impetus.lm.sampler import Generation, Particle, Resample, SamplingParams, row_seed
from impetus.lm.shared_prefix import shared_prefix

if TYPE_CHECKING:
    from impetus.lm.hf_sampler import HFSampler


@dataclass
class _Problem:
    """One prompt's particles (``rows[j]`` stays particle ``j``'s row, whatever it is copied from)."""

    idx: int
    rows: list[Row]
    seeds: list[int]
    steps: int = 0  # decoding steps since it joined: every unfinished particle has this many tokens
    blocks: list[int] = field(default_factory=list)  # blocks each particle has decoded (its seeds)
    started: list[bool] = field(default_factory=list)  # which particles decode the current block

    def views(self) -> list[Particle]:
        return [Particle(len(r.ids), r.rec.lse, r.rec.lse_temp, r.result is not None) for r in self.rows]


def _record_copy(rec: RowRecord) -> RowRecord:
    """A copy of a row's record whose lists the copy can extend alone (the tensors are shared: never written)."""
    return RowRecord(lse=list(rec.lse), tok_logit=list(rec.tok_logit), deepconf=list(rec.deepconf),
                     lse_temp=list(rec.lse_temp), states=list(rec.states), prompt_state=rec.prompt_state,
                     layer_states={k: list(v) for k, v in rec.layer_states.items()},
                     prompt_layer_state=dict(rec.prompt_layer_state))


def _become(r: Row, a: Row) -> dict[str, Any]:
    """What row ``r`` takes from its ancestor ``a`` (all of it but its identity and generator)."""
    return dict(ids=list(a.ids), logps=list(a.logps), checked=a.checked, ends=list(a.ends), rec=_record_copy(a.rec),
                result=None if a.result is None else replace(a.result, sample_idx=r.sample_idx))


class _Loop:
    """The batch: ``slots[i]`` is the unfinished particle's row in batch position ``i`` (None: a slot whose
    particle has finished, dropped at the next compaction or reused by a resampling copy)."""

    def __init__(self, s: HFSampler, prompts: list[list[int]], params: SamplingParams, seeds: list[list[int]],
                 block: int, resample: Resample, on_done: Callable[[int], None] | None, state: Any, layer_state: Any,
                 prefix: tuple[int, Any] = (0, None)):
        self.s, self.prompts, self.params, self.seeds, self.block = s, prompts, params, seeds, block
        self.prefix_len, self.prefix = prefix  # the prompts' shared few-shot prefix, attended apart
        self.resample, self.on_done, self.state, self.layer_state = resample, on_done, state, layer_state
        self.n = params.n
        self.bs = max(params.batch_size, self.n)  # a problem's particles are never split
        self.max_stop = max((len(x) for x in params.stop), default=0)
        self.slots: list[Row | None] = []
        self.running: dict[int, _Problem] = {}
        self.cache: Any = None
        self.mask = self.pos = self.logits = None

    def run(self) -> list[list[Generation]]:
        pending, every = deque(range(len(self.prompts))), []
        while pending or self.running:
            self._admit(pending, every)
            self._step()
        return [[r.result for r in p.rows] for p in every]

    def _admit(self, pending: deque, every: list[_Problem]) -> None:
        if not self.running:
            self.cache, self.slots = None, []
        live = sum(r is not None for r in self.slots)
        merge = self.cache is None or mergeable(self.cache)  # else new rows wait for an empty batch
        take = min(len(pending), (self.bs - live) // self.n) if merge else 0
        if self.running and take * self.n < min(int(self.bs * self.s.refill_fraction), len(pending) * self.n):
            take = 0  # wait until enough room frees for a worthwhile prefill forward
        dead = len(self.slots) - live
        if dead and (take or dead >= max(1, int(self.bs * self.s.compact_fraction)) or not merge):
            with record_function("impetus.cache"):
                self.cache, self.mask, self.pos, self.logits = self.s.compact(self.slots, self.cache, self.mask,
                                                                             self.pos, self.logits)
            self.slots = [r for r in self.slots if r is not None]
        if not take:
            return
        new = [self._problem(pending.popleft()) for _ in range(take)]
        every.extend(new)
        rows = [r for p in new for r in p.rows]
        call = CallOptions(record=True, keep_states=True, state=self.state, layer_state=self.layer_state,
                           prefix=self.prefix, prefix_len=self.prefix_len)
        with record_function("impetus.prefill"):
            c2, m2, p2, l2 = self.s.prefill(self.prompts, rows, call)
        if not self.slots:
            self.cache, self.mask, self.pos, self.logits = c2, m2, p2, l2
        else:
            with record_function("impetus.cache"):
                self.mask = stack_caches(self.cache, self.mask, c2, m2)
            self.pos, self.logits = torch.cat([self.pos, p2]), torch.cat([self.logits, l2])
        self.slots += rows

    def _problem(self, i: int) -> _Problem:
        rows = [Row(prompt_idx=i, sample_idx=j, gen=torch.Generator().manual_seed(row_seed(self.seeds[i][j], 0)),
                    rec=RowRecord(), cap=self.params.max_new_tokens) for j in range(self.n)]
        p = _Problem(i, rows, list(self.seeds[i]), blocks=[0] * self.n, started=[True] * self.n)
        self.running[i] = p
        return p

    def _step(self) -> None:
        live = [i for i, r in enumerate(self.slots) if r is not None]
        rows = [self.slots[i] for i in live]
        at = torch.tensor(live, device=self.logits.device)
        with record_function("impetus.nucleus"):
            toks, lps, stats = sample_tokens(self.logits[at] if len(live) < len(self.slots) else self.logits, rows,
                                             float(self.params.temperature), float(self.params.top_p), True)
        tails = {}
        for i, r, t, lp, st in zip(live, rows, toks.tolist(), lps.tolist(), stats.tolist()):
            if advance(self.s.tok, r, t, lp, st, self.s.eos_ids, self.params.stop, self.max_stop) == "length":
                tails[i] = r  # its next forward gives the lse after its last token
        fed = toks.new_zeros(len(self.slots))  # dead slots get a dummy token (their outputs are ignored)
        fed[at.to(fed.device)] = toks
        self._forward(fed, live, tails)
        self.slots = [r if r is not None and r.result is None else None for r in self.slots]  # finished rows leave
        for p in list(self.running.values()):
            p.steps += 1
            final = all(r.result is not None for r in p.rows)
            if final or p.steps % self.block == 0:
                self._boundary(p, final)

    def _forward(self, fed: torch.Tensor, live: list[int], tails: dict[int, Row]) -> None:
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        with record_function("impetus.forward"):
            out = forward(self.s.model, self.cache, input_ids=fed[:, None].to(self.s.device), attention_mask=self.mask,
                          position_ids=self.pos[:, None], use_cache=True)
        self.cache, self.logits, self.pos = out_cache(out), out.logits[:, -1], self.pos + 1
        h, hl = self.state(), self.layer_state()
        for i in live:
            r = self.slots[i]
            if r.result is None or i in tails:  # a row ended by EOS or a stop string has no state for it
                r.rec.states.append(h[i])
                for layer, x in hl.items():
                    r.rec.layer_states.setdefault(layer, []).append(x[i])
        if tails:
            tl = self.logits[torch.tensor(list(tails), device=self.logits.device)].float()
            for r, v, vt in zip(tails.values(), torch.logsumexp(tl, dim=-1).tolist(),
                                tempered_lse(tl, float(self.params.temperature)).tolist()):
                r.rec.lse.append(v)
                r.rec.lse_temp.append(vt)

    def _boundary(self, p: _Problem, final: bool) -> None:
        p.blocks = [b + int(s) for b, s in zip(p.blocks, p.started)]
        anc = self.resample(p.idx, p.views())
        if anc is not None and not final:
            self._copy(p, [int(a) for a in anc])
        if all(r.result is not None for r in p.rows):  # (resampling may have copied only finished ones)
            self._finish(p)
            return
        p.started = [r.result is None for r in p.rows]
        for r, seed, b in zip(p.rows, p.seeds, p.blocks):
            if r.result is None:
                r.gen.manual_seed(row_seed(seed + b, 0))

    def _finish(self, p: _Problem) -> None:
        for r in p.rows:
            r.result.record = pooled_record(self.s.tok, r, None, keep_states=True)
        del self.running[p.idx]
        if self.on_done is not None:
            self.on_done(1)

    def _copy(self, p: _Problem, anc: list[int]) -> None:
        """Particle ``j`` becomes a copy of particle ``anc[j]``: its row's data and, when the ancestor is
        unfinished, its cache row, mask, position and logits, in the particle's own slot, else in a free
        one (a finished particle has left the batch), else in a slot appended to the batch."""
        if len(anc) != self.n:
            raise ValueError(f"resample gave {len(anc)} ancestors for {self.n} particles")
        moved = [j for j, a in enumerate(anc) if a != j]
        if not moved:
            return
        slot = {id(r): i for i, r in enumerate(self.slots) if r is not None}
        live = [id(r) in slot for r in p.rows]
        free = [slot[id(p.rows[j])] for j in moved if live[j] and not live[anc[j]]]  # copies of finished ones
        free += [i for i, r in enumerate(self.slots) if r is None]
        pairs, grow = [], []  # (particle, its new slot, the ancestor's slot); appended: (particle, ancestor's slot)
        for j in (j for j in moved if live[anc[j]]):
            src = slot[id(p.rows[anc[j]])]
            if live[j]:
                pairs.append((j, slot[id(p.rows[j])], src))
            elif free:
                pairs.append((j, free.pop(), src))
            else:
                grow.append((j, src))
        taken = [_become(p.rows[j], p.rows[anc[j]]) for j in moved]  # every ancestor read before any write
        for j, data in zip(moved, taken):
            for k, v in data.items():
                setattr(p.rows[j], k, v)
        with record_function("impetus.cache"):
            if grow:
                self._append([src for _, src in grow])
            if pairs:
                dst = torch.tensor([d for _, d, _ in pairs], device=self.logits.device)
                src = torch.tensor([x for _, _, x in pairs], device=self.logits.device)
                copy_rows(self.cache, dst, src)
                for t in (self.mask, self.pos, self.logits):
                    t[dst] = t[src]
        for j in moved:
            if live[j] and not live[anc[j]]:
                self.slots[slot[id(p.rows[j])]] = None
        for j, d, _ in pairs:
            self.slots[d] = p.rows[j]
        self.slots += [p.rows[j] for j, _ in grow]

    def _append(self, src: list[int]) -> None:
        """Copies of batch rows ``src`` appended to the batch (one gather of the whole cache: only when
        resampling revives more finished particles than there are free slots)."""
        idx = torch.cat([torch.arange(len(self.slots)), torch.tensor(src)]).to(self.logits.device)
        self.cache.batch_select_indices(idx)
        self.mask, self.pos, self.logits = self.mask[idx], self.pos[idx], self.logits[idx]


@torch.inference_mode()
def sample_particles(s: HFSampler, prompts: list[list[int]], params: SamplingParams, seeds: list[list[int]],
                     block: int, resample: Resample, on_done: Callable[[int], None] | None = None
                     ) -> list[list[Generation]]:
    """See :meth:`impetus.lm.sampler.ParticleSampler.sample_particles`."""
    if block < 1:
        raise ValueError(f"need block >= 1, got {block}")
    if len(seeds) != len(prompts) or any(len(x) != params.n for x in seeds):
        raise ValueError(f"need {params.n} seeds for each of {len(prompts)} prompts")
    prompts = [list(q) for q in prompts]
    if any(not q for q in prompts):
        raise ValueError("empty prompt (no tokens); the model needs at least one token to condition on")
    if not prompts:
        return []
    # The few-shot prefix the prompts share is prefilled once and attended apart, as generate() does:
    # the particles' caches (and every resampling copy and compaction of them) hold their own tokens only.
    prefix = s._shared_prefix(prompts) if s.share_prefix else (0, None)
    with last_state_hook(s.model) as state, layer_state_hook(s.model, s.layers) as layer_state, \
            shared_prefix(prefix[1]):
        return _Loop(s, prompts, params, seeds, block, resample, on_done, state, layer_state, prefix).run()
