"""V2's policy-gradient steps after LatentSeek's own objective, and an exact one over the top-k.

LatentSeek (Li et al., arXiv:2505.13308) ascends ``R · Σ_j log π(argmax_j | z_j)`` over the window
(the first ρ of the answer's tokens, ``positions: prefix``): the current answer's tokens are
reinforced when its reward is good and pushed away when it is bad, with an absolute learning rate
(0.03–0.05 in the paper), no trust region, early stopping once the answer is good enough, and the
last answer returned. Here ``R = −(E − mean) / std`` of the problem's candidate pool's energies, and
"good enough" is an energy at or below the pool's lowest (:func:`latentseek_step`).

``topk_pg`` (:func:`topk_pg_step`) is the exact policy gradient of ``J(z) = Σ_v p_v(z) R_v`` over
the ``k`` tokens the model ranks highest at the window's first position (``p`` renormalised over
them): ``∇J = Σ_v p_v (R_v − R̄) ∇log p_v``, with ``R_v`` the z-scored reward of the answer forced
to ``v`` there and decoded greedily. Those answers depend on ``v`` only, so they are generated and
scored once, and each step's decode of ``z`` (its argmax, one of the ``k``) is looked up among them
(``_Job.known``, as every mode's repeated windows are) rather than generated again; ``z`` moves
whenever their energies differ (a sampled REINFORCE step with 4 draws from a peaked distribution
mostly draws the argmax 4 times and does not move).

Both take :class:`impetus.latent.optimize.LatentOptimizer` and its live jobs, and return the
answers they generated with their owners and energies (counted in the job's tokens and best).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

if TYPE_CHECKING:
    from impetus.latent.optimize import BatchEnergy, LatentOptimizer, _Job

Step = tuple[list[int], list[Any], np.ndarray]  # owners, the answers generated (traces), their energies


def reward(energy: float, pool: tuple[float, float, float] | None, start_energy: float) -> float:
    """``−(E − mean) / std`` of the problem's pool (no pool: relative to the start answer)."""
    mean, std = (pool[0], pool[1]) if pool is not None else (start_energy, 1.0)
    return -(energy - mean) / max(std, 1e-6)


def latentseek_step(opt: LatentOptimizer, live: list[tuple[int, _Job]], energy: BatchEnergy) -> Step:
    """One LatentSeek update of every job from its current answer's reward (generates nothing)."""
    for _, job in live:
        r = reward(job.last[0], job.pool, job.start_energy)
        with torch.enable_grad():
            logp = torch.log_softmax(opt.sampler.state_logits(job.z).float(), dim=-1)  # [w, V]
            top = logp.detach().argmax(dim=-1, keepdim=True)
            loss = -r * logp.gather(1, top).sum()
            job.opt.zero_grad()
            loss.backward()
        job.opt.step()
    return [], [], np.zeros(0)


def _alternatives(opt: LatentOptimizer, jobs: list[tuple[int, _Job]], energy: BatchEnergy) -> Step:
    """Each new job's top-k tokens at its position, their greedy answers and z-scored rewards (once);
    returns the answers new to their job (the argmax's is usually the zero-step control's, already known)."""
    m = opt.cfg.samples
    with torch.no_grad():
        tops = [torch.topk(opt.sampler.state_logits(j.z0[:1]).float()[0], m).indices for _, j in jobs]
    flat = [(k, j) for k, j in jobs for _ in range(m)]
    gens, e, fresh = opt._answers(flat, energy, [[int(v)] for t in tops for v in t])
    for c, ((_, job), top) in enumerate(zip(jobs, tops)):
        ej = e[c * m: (c + 1) * m]
        sd = ej.std()
        r = -(ej - ej.mean()) / sd if sd > 0 else np.zeros_like(ej)
        job.alts = (top, torch.as_tensor(r, dtype=torch.float32))
    new = np.flatnonzero(fresh)
    return [flat[c][0] for c in new], [gens[c] for c in new], e[new]


def topk_pg_step(opt: LatentOptimizer, live: list[tuple[int, _Job]], energy: BatchEnergy) -> Step:
    """One exact policy-gradient step over each job's top-k tokens (their answers made on first use)."""
    new = [(k, j) for k, j in live if j.alts is None]
    made = _alternatives(opt, new, energy) if new else ([], [], np.zeros(0))
    for _, job in live:
        top, r = job.alts
        with torch.enable_grad():
            logp = torch.log_softmax(opt.sampler.state_logits(job.z[:1]).float()[0][top], dim=-1)  # over the k
            p = logp.detach().exp()
            loss = -(p * (r - (p * r).sum()) * logp).sum()
            job.opt.zero_grad()
            loss.backward()
        job.opt.step()
    return made


POLICY_STEPS: dict[str, Callable[..., Any]] = {"latentseek": latentseek_step, "topk_pg": topk_pg_step}
