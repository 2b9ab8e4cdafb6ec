"""EBD and V2 stand on the sampler protocols only (``impetus.lm.sampler``), not on ``HFSampler``.

- no module of ``impetus.decoding`` or ``impetus.latent`` imports a backend, the Kedro parameter
  schema or a pipeline (read from their source, so a lazy import inside a function counts too);
- EBD's core (:func:`impetus.decoding.evaluate.evaluate_ebd`) and V2's core
  (:func:`impetus.latent.evaluate.evaluate_v2`) run on :class:`ToySampler`, a second backend written
  here: a bigram model over the tiny character vocabulary whose "cache" is the token ids it saw.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import impetus.decoding
import impetus.latent
from impetus.decoding.evaluate import EBDConfig, EBDSplit, evaluate_ebd, run_problems
from impetus.latent.optimize import LatentConfig, LatentOptimizer
from impetus.latent.evaluate import Split, V2Config, evaluate_v2
from impetus.lm.recording import step_stats
from impetus.lm.sampler import ContinuingSampler, Generation, LatentSampler, SamplingParams, kept_before, row_seed
from impetus.lm.trace import Trace, trace_energies
from impetus.selection.budget import v1_reference
from impetus.testing import tiny_tokenizer

FORBIDDEN = ("impetus.lm.hf_sampler", "impetus.lm.hf_encode", "impetus.framework", "impetus.pipelines", "kedro", "mlflow")
#: The Kedro-free core (DESIGN.md, layer 1): a notebook imports it without Kedro or MLflow.
CORE = ("benchmarks", "lm", "energy", "learned", "selection", "latent", "decoding")
GLUE = ("impetus.framework", "impetus.pipelines", "kedro", "mlflow")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", [impetus.decoding, impetus.latent], ids=["decoding", "latent"])
def test_core_imports_the_sampler_interface_only(package):
    files = sorted(Path(package.__file__).parent.glob("*.py"))
    assert len(files) >= 4  # not vacuous: the package's modules were found
    bad = {f.name: sorted(n for n in _imports(f) if any(n == x or n.startswith(x + ".") for x in FORBIDDEN))
           for f in files}
    assert {k: v for k, v in bad.items() if v} == {}


@pytest.mark.parametrize("area", CORE)
def test_core_area_imports_no_framework(area):
    files = sorted((Path(impetus.decoding.__file__).parent.parent / area).rglob("*.py"))
    assert files
    bad = {f.name: sorted(n for n in _imports(f) if any(n == x or n.startswith(x + ".") for x in GLUE))
           for f in files}
    assert {k: v for k, v in bad.items() if v} == {}


class ToySampler:
    """A bigram LM: the state of a token is ``emb[token]`` and its next-token logits ``head @ state``.

    Implements :class:`ContinuingSampler` and :class:`LatentSampler` from scratch (no HF model); a
    row's cache is the token ids it covers, and ``continue_rows`` checks it is the prompt's prefix."""

    name = "toy"

    def __init__(self, tokenizer, hidden: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.tok, V = tokenizer, len(tokenizer)
        self.emb = torch.randn(V, hidden, generator=g) * 2.0
        self.head = torch.randn(V, hidden, generator=g)
        self.eos = tokenizer.eos_token_id
        self.continued_from_cache = 0

    # ----- Sampler
    def generate(self, prompts, params, seeds, progress=None, first_sample=0, answer_span=None):
        return [[self._row(self._ids(p), params, row_seed(s, j), params.max_new_tokens, j)
                 for j in range(first_sample, first_sample + params.n)] for p, s in zip(prompts, seeds)]

    # ----- ContinuingSampler
    def can_continue(self) -> bool:
        return True

    def continue_rows(self, prompts, params, seeds, max_new, past=None, keep_past=False, forced=None, ban=None):
        assert params.n == 1
        out = []
        for i, (p, s, cap) in enumerate(zip(prompts, seeds, max_new)):
            if past is not None:
                n = min(len(past[i]), len(p) - 1)  # a chain's cache may run past the kept prefix
                assert n > 0 and past[i][:n] == list(p[:n]), "a cache must hold the prompt's first tokens"
                self.continued_from_cache += 1
            out.append(self._row(list(p), params, row_seed(s, 0), cap, 0, keep_past=keep_past,
                                 forced=forced[i] if forced else (), ban=ban[i] if ban else None))
        return out

    def encode_answers(self, prompt, answers, keep_past, temperature=1.0):
        traces = []
        for a in answers:
            ids = list(prompt) + list(a)
            lse, tok, conf, lse_t = self._stats(ids[len(prompt) - 1 :], list(a), temperature)
            traces.append(Trace(ids=list(a), lse=lse, tok_logit=tok, deepconf=conf, lse_temp=lse_t,
                                states=self.emb[list(a)].numpy().reshape(len(a), self.emb.shape[1]),
                                prompt_state=self.emb[prompt[-1]].numpy(), past=ids if keep_past else None))
        return traces

    # ----- LatentSampler
    def state_logits(self, states):
        return states @ self.head.T

    # ----- the model
    def _ids(self, prompt):
        return self.tok(prompt)["input_ids"] if isinstance(prompt, str) else list(prompt)

    def _stats(self, context, tokens, temperature):
        """(lse, tok_logit, deepconf, lse_temp) of ``tokens`` after ``context`` (its last T + 1 tokens)."""
        logits = self.state_logits(self.emb[context])  # [T + 1, V]
        pad = torch.tensor(list(tokens) + [0])
        st = step_stats(logits, pad, temperature=temperature).numpy()
        T = len(tokens)
        return st[:, 0], st[:T, 1], st[:T, 2], st[:, 3]

    def _row(self, ids, params, seed, cap, j, keep_past=False, forced=(), ban=None):
        g, new, logps, forced = torch.Generator().manual_seed(seed), [], [], list(forced)
        reason = "length"
        while len(new) < cap:
            logits = self.state_logits(self.emb[(ids + new)[-1]])
            probs = torch.softmax(logits / max(params.temperature, 1e-9), -1)
            if ban is not None and not new:  # the differing kernel's first step
                probs = probs.clone()
                probs[ban] = 0.0
            t = (forced.pop(0) if forced else int(logits.argmax()) if params.temperature == 0 else
                 int(torch.multinomial(probs, 1, generator=g)))
            if t == self.eos:
                reason = "eos"
                break
            new.append(t)
            logps.append(float(torch.log_softmax(logits, -1)[t]))
        text = self.tok.decode(new)
        hits = [p for p in (text.find(s) for s in params.stop) if p >= 0]
        if hits:
            new = new[: kept_before(self.tok, new, min(hits))]
            text, reason = self.tok.decode(new), "stop"
        lse, tok, conf, lse_t = self._stats((ids + new)[len(ids) - 1 :], new, params.temperature)
        record = {"lse": lse, "tok_logit": tok, "deepconf": conf, "lse_temp": lse_t,
                  "states": self.emb[new].numpy().reshape(len(new), self.emb.shape[1])}
        return Generation(text=text, token_ids=new, n_tokens=len(new), finish_reason=reason,
                          logprob_mean=float(np.mean(logps)) if logps else float("nan"), seconds=0.0, sample_idx=j,
                          record=record, past=(ids + new)[:-1] if keep_past else None)


PARAMS = SamplingParams(n=3, temperature=1.0, top_p=1.0, max_new_tokens=6, stop=["\n"], batch_size=8, seed=0)


@pytest.fixture(scope="module")
def toy():
    tok = tiny_tokenizer()
    sampler = ToySampler(tok)
    prompts = pd.DataFrame({"problem_id": ["p0", "p1"], "prompt": ["Q: 1+2?\nA:", "Q: 3+4?\nA:"]})
    gens = sampler.generate(prompts["prompt"].tolist(), PARAMS, [11, 12])
    cands = pd.DataFrame([{"problem_id": pid, "sample_idx": g.sample_idx, "completion": g.text, "n_tokens": g.n_tokens,
                           "finish_reason": g.finish_reason, "answer": g.text[:1] or None, "correct": g.text[:1] == "7"}
                          for pid, row in zip(prompts["problem_id"], gens) for g in row])
    return tok, sampler, prompts, cands


def grade(_pid: str, text: str):
    return (text[:1] or None), text[:1] == "7"


def test_toy_implements_both_protocols(toy):
    _, sampler, _, cands = toy
    assert isinstance(sampler, ContinuingSampler) and isinstance(sampler, LatentSampler)
    assert cands["completion"].nunique() > 2  # varied starts: the runs below are not vacuous


def test_ebd_core_runs_on_a_second_backend(toy):
    tok, sampler, prompts, cands = toy
    cfg = EBDConfig(n_problems=None, energy="neg_logprob_mean", tau=1.0, alpha=2.0, block=2, chains=2, n_init=1,
                    steps=3, answer="lowest", kernel="resample", grid={}, search="product", dev_problems=None, n_boot=100, seed=0, progress=False)
    table = cands.assign(neg_logprob_mean=np.linspace(0, 1, len(cands)))
    v1 = v1_reference(table, {"headline": {"method": "majority"}}, vote_for=[cfg.energy])

    def score(_pid, traces):
        return trace_energies(tok, traces, [None] * len(traces))[0]

    split = EBDSplit(prompts, table, score, grade)
    runs = [evaluate_ebd(sampler, tok, PARAMS, split, v1, cfg) for _ in range(2)]
    (result, answers, per_step), (again, answers2, _) = runs
    assert result["reuse_cache"] is True and sampler.continued_from_cache > 0
    assert {"ebd_lowest", "ebd_vote"} <= set(result["methods"])
    assert any(k.startswith("ebd_lowest vs majority@") for k in result["comparisons"])  # the headline, resolved
    start_tokens = cands[cands.sample_idx < 2].groupby("problem_id")["n_tokens"].sum()
    assert (answers.set_index("problem_id")["tokens"] > start_tokens.reindex(answers["problem_id"]).to_numpy()).all()
    assert set(pd.DataFrame(result["ebd_curve"])["step"]) == {0, 1, 2, 3}
    pd.testing.assert_frame_equal(answers.drop(columns="seconds"), answers2.drop(columns="seconds"))  # same seeds


def test_differing_kernel_runs_on_a_second_backend(toy):
    """``kernel: differ`` reaches the model only through ``continue_rows(ban=...)``: every proposal
    that can differ does, and the run is deterministic."""
    tok, sampler, prompts, cands = toy
    cfg = EBDConfig(n_problems=None, energy="neg_logprob_mean", tau=1.0, alpha=2.0, block=2, chains=2, n_init=1,
                    steps=4, answer="lowest", kernel="differ", grid={}, search="product", dev_problems=None, n_boot=100,
                    seed=0, progress=False)
    table = cands.assign(neg_logprob_mean=np.linspace(0, 1, len(cands)))
    v1 = v1_reference(table, {"headline": {"method": "majority"}}, vote_for=[cfg.energy])
    split = EBDSplit(prompts, table, lambda _pid, traces: trace_energies(tok, traces, [None] * len(traces))[0], grade)
    (result, answers, _), (_, again, _) = (evaluate_ebd(sampler, tok, PARAMS, split, v1, cfg) for _ in range(2))
    rows = answers[answers["method"] == "ebd_lowest"]
    assert rows["proposals"].sum() == 2 * 2 * 4
    assert (rows["moves"] + rows["rejections"] == rows["proposals"]).all()  # no proposal equals the chain's answer
    assert result["kernel"] == "differ"
    from impetus.decoding.report import markdown

    report = markdown(result)
    assert "must change its first token" in report and report.startswith("## EBD: block-wise Metropolis–Hastings vs")
    pd.testing.assert_frame_equal(answers.drop(columns="seconds"), again.drop(columns="seconds"))


def test_power_smc_runs_on_a_second_backend(toy):
    """``kernel: smc`` reaches the model only through ``encode_answers`` and ``continue_rows``: chains x
    n_init particles per problem grown from the prompt, their tokens all EBD spends (no V1 starts),
    every step's row the final answer, deterministic for a seed."""
    tok, sampler, prompts, cands = toy
    cfg = EBDConfig(n_problems=None, energy="neg_logprob_mean", tau=0.5, alpha=2.0, block=2, chains=1, n_init=3,
                    steps=3, answer="vote", kernel="smc", grid={}, search="product", dev_problems=None, n_boot=100,
                    seed=0, progress=False)
    table = cands.assign(neg_logprob_mean=np.linspace(0, 1, len(cands)), gen_seconds=0.5)
    v1 = v1_reference(table, {"headline": {"method": "majority"}}, vote_for=[cfg.energy])
    split = EBDSplit(prompts, table, lambda _pid, traces: trace_energies(tok, traces, [None] * len(traces))[0], grade)
    before = sampler.continued_from_cache
    (result, answers, per_step), (_, again, _) = (evaluate_ebd(sampler, tok, PARAMS, split, v1, cfg) for _ in range(2))
    assert sampler.continued_from_cache > before and result["reuse_cache"] is True
    rows = answers[answers["method"] == "ebd_vote"].set_index("problem_id")
    # 3 particles of at most 6 tokens each, and some tokens (the particles start empty)
    assert ((rows["tokens"] > 0) & (rows["tokens"] <= 3 * PARAMS.max_new_tokens)).all()
    assert (rows["proposals"] == 0).all() and (rows["resamples"] >= 0).all() and rows["final_ess"].between(0, 1).all()
    steps = per_step.groupby(["problem_id", "method"])[["correct", "tokens"]].nunique()
    assert set(per_step["step"]) == {0, 1, 2, 3} and (steps == 1).all().all()  # no MH steps: one answer throughout
    assert result["sampling_seconds_per_problem"] == pytest.approx(1.5)  # 3 candidates x 0.5 s
    assert result["latency_vs_sampling"] == pytest.approx(rows["seconds"].mean() / 1.5)
    from impetus.decoding.report import markdown

    report = markdown(result)
    assert "Power-SMC: 3 particles" in report and report.startswith("## EBD: Power-SMC vs")
    assert "Metropolis" not in report and "proposals that differ" not in report  # no MH wording for SMC
    pd.testing.assert_frame_equal(answers.drop(columns="seconds"), again.drop(columns="seconds"))


@pytest.mark.parametrize("kernel", ["resample", "smc"])
def test_scoring_many_problems_at_once_changes_no_chain(toy, kernel):
    """``EBDSplit.score_many`` scores a batch's states of every problem in one call (one MiniLM and one
    EBM batch); for a row-wise energy the chains equal those scored problem by problem."""
    tok, sampler, prompts, cands = toy
    cfg = EBDConfig(n_problems=None, energy="neg_logprob_mean", tau=0.5, alpha=2.0, block=2, chains=2, n_init=1,
                    steps=3, answer="lowest", kernel=kernel, grid={}, search="product", dev_problems=None, n_boot=100,
                    seed=0, progress=False)
    table = cands.assign(neg_logprob_mean=np.linspace(0, 1, len(cands)))
    v1 = v1_reference(table, {"headline": {"method": "majority"}}, vote_for=[cfg.energy])
    calls = []

    def score(pids, traces):
        calls.append(sorted(set(pids)))
        return trace_energies(tok, traces, [None] * len(traces))[0]

    one = EBDSplit(prompts, table, lambda pid, traces: score([pid] * len(traces), traces), grade)
    many = dataclasses.replace(one, score_many=score)
    _, by_problem, _ = evaluate_ebd(sampler, tok, PARAMS, one, v1, cfg)
    assert calls and all(len(c) == 1 for c in calls)
    calls.clear()
    _, at_once, _ = evaluate_ebd(sampler, tok, PARAMS, many, v1, cfg)
    # one call per step at most, with both problems' new states (a step where a chain's proposal was
    # already scored asks only about the others)
    assert calls and len(calls) <= cfg.steps + 1 and ["p0", "p1"] in calls
    pd.testing.assert_frame_equal(by_problem.drop(columns="seconds"), at_once.drop(columns="seconds"))


def test_ebd_answer_is_chosen_on_dev_from_one_run(toy, monkeypatch):
    """``answer: [lowest, vote]`` in the grid: both are read off the same dev chains (one run), and
    the chosen one is the better on dev."""
    import impetus.decoding.evaluate as ev

    tok, sampler, prompts, cands = toy
    cfg = EBDConfig(n_problems=None, energy="neg_logprob_mean", tau=1.0, alpha=2.0, block=2, chains=2, n_init=1,
                    steps=3, answer="lowest", kernel="resample", grid={"answer": ["lowest", "vote"]}, search="product",
                    dev_problems=None, n_boot=100, seed=0, progress=False)
    table = cands.assign(neg_logprob_mean=np.linspace(0, 1, len(cands)))
    v1 = v1_reference(table, {"headline": {"method": "majority"}}, vote_for=[cfg.energy])
    split = EBDSplit(prompts, table, lambda _pid, traces: trace_energies(tok, traces, [None] * len(traces))[0], grade)
    calls = []
    real = ev.decode_split
    monkeypatch.setattr(ev, "decode_split", lambda *a, **k: calls.append(1) or real(*a, **k))
    result, _, per_step = evaluate_ebd(sampler, tok, PARAMS, split, v1, cfg, dev=split)
    assert len(calls) == 2  # one dev run for both answers, then eval
    scores = {p["settings"]["answer"]: p["dev_score"] for p in result["grid_dev_accuracy"]}
    best = "vote" if scores["vote"] > scores["lowest"] else "lowest"
    assert result["answer"] == best and result["chosen_method"] == f"ebd_{best}"
    assert set(per_step["split"]) == {"eval", "dev"}  # the chosen setting's dev run, per problem and step
    dev_curve = per_step[per_step["split"] == "dev"].groupby(["method", "step"])["correct"].mean()
    assert dev_curve.loc[(f"ebd_{best}", 3)] == scores[best]


def test_v2_core_runs_on_a_second_backend(toy):
    tok, sampler, prompts, cands = toy
    cfg = V2Config(n_problems=None, energy="planted", starts=("single", "v1"), modes=("reinforce", "gradient"),
                   positions="prefix", prefix_fraction=0.5, window=1, steps=4, lr=1.0, samples=6, radius=2.0,
                   patience=None, grid={"lr": [1.0, 2.0]}, search="product", dev_problems=None, mode_settings={}, ceiling_k=3, compare_to=("headline",), n_boot=100,
                   seed=0, progress=False)
    v1 = v1_reference(cands.assign(planted=0.0), {"headline": {"method": "majority"}})
    selections = pd.DataFrame({"problem_id": ["p0", "p1"], "first": 0, "majority": 1})
    # the likeliest first character that no start answer has: reachable by sampling prefixes
    first = sampler.state_logits(sampler.emb[tok(":", add_special_tokens=False)["input_ids"][0]])
    target = next(c for c in (tok.convert_ids_to_tokens(int(i)) for i in first.argsort(descending=True))
                  if len(c) == 1 and c.isalnum() and not any(cands["completion"].str.startswith(c)))

    def score(_pids, traces):  # lowest for answers starting with ``target``
        return pd.DataFrame({"planted": [0.0 if tok.decode(t.ids).startswith(target) else 1.0 for t in traces]})

    direction = sampler.head[tok.convert_tokens_to_ids(target)]  # raises the target's logit
    split = Split(prompts, cands, score, grade)
    result, v2, dev = evaluate_v2(sampler, tok, PARAMS, split, selections, v1, cfg, dev=split,
                                  state_energy=lambda h: -(h @ direction), hidden_source="mean")
    assert len(v2) == 2 * 4 * 2 and {"v2_reinforce_single", "v2_gradient_v1", "majority"} <= set(result["methods"])
    assert result["methods"]["v2_reinforce_v1_control"]["family"] == "v2_control"
    assert result["chosen_on"] == "dev" and set(result["settings"]) == {"reinforce", "gradient"}
    assert {p["settings"]["lr"] for p in result["grid_dev_accuracy"]["reinforce"]} == {1.0, 2.0}
    assert (v2["energy_after"] <= v2["energy_before"]).all() and (v2["energy_before"] == 1.0).all()
    assert (v2["energy_after"] == 0.0).any() and v2["text"].str.startswith(target).any()  # V2 moved answers
    # The chosen settings' dev answers (from each dev problem's first sample): their accuracy is the
    # dev score the grid chose by, and an answer costs its start plus what V2 generated up to its steps.
    assert sorted(dev["method"].unique()) == ["v2_gradient_single", "v2_gradient_single_control",
                                              "v2_reinforce_single", "v2_reinforce_single_control"]
    assert len(dev) == 4 * 2
    for mode in ("reinforce", "gradient"):
        chosen = [p["dev_score"] for p in result["grid_dev_accuracy"][mode] if p["settings"]["lr"] == result["settings"][mode]["lr"]]
        assert dev.loc[dev["method"] == f"v2_{mode}_single", "correct"].mean() == chosen[0]
    first_tokens = cands[cands["sample_idx"] == 0].set_index("problem_id")["n_tokens"]
    mine = dev[dev["method"] == "v2_reinforce_single"].set_index("problem_id")
    assert (mine["tokens"] > first_tokens.reindex(mine.index)).all()  # it generated while optimising
    _, again, dev_again = evaluate_v2(sampler, tok, PARAMS, split, selections, v1, cfg, dev=split,
                                      state_energy=lambda h: -(h @ direction), hidden_source="mean")
    pd.testing.assert_frame_equal(dev, dev_again)
    assert v2["text"].tolist() == again["text"].tolist()


def _ebd_inputs(toy):
    tok, sampler, prompts, cands = toy
    prompt_ids = [tok(p)["input_ids"] for p in prompts["prompt"]]
    starts = [[tok(c, add_special_tokens=False)["input_ids"] for c in cands.loc[cands.problem_id == pid, "completion"][:2]]
              for pid in prompts["problem_id"]]

    def energy(_k, traces):
        return trace_energies(tok, traces, [None] * len(traces))[0]["neg_logprob_mean"].to_numpy(float)

    return prompt_ids, starts, energy


def test_an_ebd_chain_after_s_of_k_steps_is_the_s_step_chain(toy):
    """What lets the dev grid read every listed ``steps`` off one run at the largest."""
    tok, sampler, _, _ = toy
    cfg = EBDConfig(n_problems=None, energy="neg_logprob_mean", tau=0.5, alpha=2.0, block=2, chains=2, n_init=1,
                    steps=5, answer="lowest", kernel="resample", grid={}, search="product", dev_problems=None, n_boot=100, seed=0, progress=False)
    prompt_ids, starts, energy = _ebd_inputs(toy)
    params = dataclasses.replace(PARAMS, n=1, temperature=0.5)
    long, _ = run_problems(sampler, tok, params, prompt_ids, starts, energy, cfg)
    short, _ = run_problems(sampler, tok, params, prompt_ids, starts, energy, dataclasses.replace(cfg, steps=2))
    assert any(acc for c in long for a in c.accepted for acc in a[2:])  # the later steps moved some chain
    for a, b in zip(long, short):
        assert [s[:3] for s in a.states] == b.states and [e[:3] for e in a.energies] == b.energies


def test_v2_answer_after_s_of_k_steps_is_the_s_step_answer(toy):
    """What lets V2's dev grid read every listed ``steps`` off one run at the largest."""
    tok, sampler, prompts, cands = toy

    def energy(_owners, traces):  # lower for answers of lower character codes: improvable step after step
        return np.array([float(sum(map(ord, tok.decode(t.ids)))) for t in traces])

    items = [(tok(p)["input_ids"], tok(c, add_special_tokens=False)["input_ids"])
             for p, c in zip(prompts["prompt"], cands.groupby("problem_id")["completion"].first())]
    cfg = LatentConfig(mode="reinforce", positions="prefix", prefix_fraction=1.0, window=1, steps=4, lr=1.0,
                       samples=4, radius=1.0, patience=None)
    runs = {k: LatentOptimizer(sampler, tok, PARAMS, dataclasses.replace(cfg, steps=k)).optimize_many(items, energy, [3, 4])
            for k in (1, 4)}
    assert any(r.steps[4]["best_text"] != r.steps[1]["best_text"] for r in runs[4])  # steps 2-4 improved some answer
    for a, b in zip(runs[4], runs[1]):
        assert a.steps[1]["best_text"] == b.text and a.steps[:2] == b.steps


def test_v2_dev_grid_without_steps_runs_each_mode_at_its_own_steps(toy, monkeypatch):
    """mode_settings may set a mode's steps (latentseek: 6): a dev grid that does not list steps must
    score the mode at those, the steps eval then runs, not at the shared ``steps``."""
    import impetus.latent.evaluate as ev

    tok, sampler, prompts, cands = toy
    cfg = V2Config(n_problems=None, energy="planted", starts=("single",), modes=("reinforce",), positions="prefix",
                   prefix_fraction=0.5, window=1, steps=1, lr=1.0, samples=2, radius=2.0, patience=None,
                   grid={"lr": [1.0, 2.0]}, search="product", dev_problems=None,
                   mode_settings={"reinforce": {"steps": 3}}, ceiling_k=0, compare_to=("headline",), n_boot=100,
                   seed=0, progress=False)
    v1 = v1_reference(cands.assign(planted=0.0), {"headline": {"method": "majority"}})
    selections = pd.DataFrame({"problem_id": ["p0", "p1"], "first": 0, "majority": 1})
    split = Split(prompts, cands, lambda _p, traces: pd.DataFrame({"planted": [float(len(t.ids)) for t in traces]}),
                  grade)
    seen: list[int] = []
    real = ev.optimize_split
    monkeypatch.setattr(ev, "optimize_split", lambda *a, **k: (seen.append(a[6]["reinforce"].steps), real(*a, **k))[1])
    result, _, _ = evaluate_v2(sampler, tok, PARAMS, split, selections, v1, cfg, dev=split)
    assert seen == [3, 3, 3]  # two dev runs (lr 1 and 2), then eval: all at the mode's 3 steps
    assert result["settings"]["reinforce"]["steps"] == 3


def test_ebd_dev_runs_are_kept_and_a_rerun_after_a_crash_decodes_only_the_missing(toy, monkeypatch, tmp_path):
    """``dev_runs``: a run that dies after its first dev run keeps that run; the rerun decodes the
    other dev run and eval only, and gives what a run without any kept runs gives."""
    import impetus.decoding.evaluate as ev
    from impetus.selection.point_cache import PointCache

    tok, sampler, prompts, cands = toy
    cfg = EBDConfig(n_problems=None, energy="neg_logprob_mean", tau=1.0, alpha=2.0, block=2, chains=2, n_init=1,
                    steps=3, answer="lowest", kernel="resample", grid={"tau": [0.5, 1.0], "answer": ["lowest", "vote"]},
                    search="product", dev_problems=None, n_boot=100, seed=0, progress=False)
    table = cands.assign(neg_logprob_mean=np.linspace(0, 1, len(cands)))
    v1 = v1_reference(table, {"headline": {"method": "majority"}}, vote_for=[cfg.energy])
    split = EBDSplit(prompts, table, lambda _pid, traces: trace_energies(tok, traces, [None] * len(traces))[0], grade)
    reference = evaluate_ebd(sampler, tok, PARAMS, split, v1, cfg, dev=split)  # nothing kept
    calls = []
    real = ev.decode_split

    def dies_on_the_second(*a, **k):
        calls.append(a[5].tau)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*a, **k)

    monkeypatch.setattr(ev, "decode_split", dies_on_the_second)
    kept = PointCache(str(tmp_path / "runs"), "this run")
    with pytest.raises(RuntimeError, match="killed"):
        evaluate_ebd(sampler, tok, PARAMS, split, v1, cfg, dev=split, dev_runs=kept)
    assert len(list((tmp_path / "runs").glob("*.json"))) == 1  # the first dev run, and nothing half-written
    monkeypatch.setattr(ev, "decode_split", lambda *a, **k: calls.append(a[5].tau) or real(*a, **k))
    calls.clear()
    result, answers, per_step = evaluate_ebd(sampler, tok, PARAMS, split, v1, cfg, dev=split,
                                             dev_runs=PointCache(str(tmp_path / "runs"), "this run"))
    assert calls == [1.0, result["tau"]]  # the missing dev run (tau 1.0), then eval at the chosen tau
    assert result["grid_dev_accuracy"] == reference[0]["grid_dev_accuracy"] and result["tau"] == reference[0]["tau"]
    pd.testing.assert_frame_equal(per_step, reference[2])  # the chosen dev run's rows, read back as they were
    pd.testing.assert_frame_equal(answers.drop(columns="seconds"), reference[1].drop(columns="seconds"))  # wall time aside
    calls.clear()
    evaluate_ebd(sampler, tok, PARAMS, split, v1, cfg, dev=split, dev_runs=PointCache(str(tmp_path / "runs"), "another"))
    assert len(calls) == 3  # another key (another model, data or code): every dev run again


def test_v2_dev_runs_are_kept_and_reread(toy, monkeypatch, tmp_path):
    """V2's dev runs kept under ``dev_runs``: a rerun optimises eval only, with the same dev answers."""
    import impetus.latent.evaluate as ev
    from impetus.selection.point_cache import PointCache

    tok, sampler, prompts, cands = toy
    cfg = V2Config(n_problems=None, energy="planted", starts=("single",), modes=("reinforce",), positions="prefix",
                   prefix_fraction=0.5, window=1, steps=2, lr=1.0, samples=4, radius=2.0, patience=None,
                   grid={"lr": [1.0, 2.0]}, search="product", dev_problems=None, mode_settings={}, ceiling_k=0,
                   compare_to=("headline",), n_boot=100, seed=0, progress=False)
    v1 = v1_reference(cands.assign(planted=0.0), {"headline": {"method": "majority"}})
    selections = pd.DataFrame({"problem_id": ["p0", "p1"], "first": 0, "majority": 1})
    split = Split(prompts, cands, lambda _p, traces: pd.DataFrame({"planted": [float(len(t.ids)) for t in traces]}),
                  grade)
    calls = []
    real = ev.optimize_split
    monkeypatch.setattr(ev, "optimize_split", lambda *a, **k: calls.append(1) or real(*a, **k))
    runs = [evaluate_v2(sampler, tok, PARAMS, split, selections, v1, cfg, dev=split,
                        dev_runs=PointCache(str(tmp_path / "v2"), "this run")) for _ in range(2)]
    assert len(calls) == 3 + 1  # two dev runs and eval, then eval alone
    (first, v2, dev), (again, v2_again, dev_again) = runs
    assert first["grid_dev_accuracy"] == again["grid_dev_accuracy"]
    pd.testing.assert_frame_equal(dev, dev_again)
    assert v2["text"].tolist() == v2_again["text"].tolist()
