"""A tiny random Qwen2 model, built offline, for tests, benchmarks and ``model=tiny`` runs.

It has the real Qwen2 architecture and a real byte-level BPE tokenizer with Qwen's
special tokens and a Qwen-style chat template, so every code path (chat rendering,
left padding, LoRA adapters, grammar masks, end-of-turn stopping) runs exactly as
with Qwen2.5-7B-Instruct, only millions of times cheaper. Its weights are random,
so what it *says* is noise; that is the point of the grammar tests.

The tokenizer is trained with the ``tokenizers`` library on a frozen snapshot of the
project's own text shipped with the package (never the network, never ``../shared``),
so it exists on every checkout and every installed copy and does not drift with code
changes. The result is a plain Hugging Face model directory, cached
under ``<cache>/tiny/<hash of spec, seed, corpus and library versions>`` and built
atomically (temporary directory + rename), so concurrent builders cannot see or
leave a half-written model. Same seed gives byte-identical files.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import tokenizers
import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# Qwen2's pre-tokenizer split (transformers/models/qwen2/tokenization_qwen2.py).
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2.5's template without tool calls, with TRL-style {% generation %} markers
# around what the assistant says (end-of-turn included, so training learns to stop).
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_CORPUS_FILE = "tiny_corpus.txt.gz"


@dataclass(frozen=True)
class TinySpec:
    """Shape of the tiny model; every field is part of the cache key."""

    vocab_size: int = 4096  # lm_head rows: more than the tokenizer has, as in Qwen
    tokenizer_vocab_size: int = 4000
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 4096
    # Qwen's 0.02 makes a 2-layer random model answer "\n\n\n..." to every prompt; at 0.1
    # greedy output depends on the prompt, so tests can tell prompts and adapters apart.
    initializer_range: float = 0.1


def build_tiny_model(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    spec: TinySpec = TinySpec(),
) -> Path:
    """Return the directory of the tiny model for ``seed``, building it once if absent.

    ``cache_dir`` is the websynthesis cache root (default ``$WEBSYNTHESIS_CACHE`` or
    ``~/.cache/websynthesis``); the model lives in ``<root>/tiny/<key>``. The
    directory loads with ``AutoModelForCausalLM``/``AutoTokenizer.from_pretrained``.
    """
    corpus = _corpus()
    root = Path(cache_dir or os.environ.get("WEBSYNTHESIS_CACHE") or "~/.cache/websynthesis")
    target = root.expanduser() / "tiny" / _cache_key(spec, seed, corpus)
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        _write_model(tmp, spec, seed, corpus)
        try:
            tmp.rename(target)
        except OSError:  # another builder won the race; its copy is identical
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _corpus() -> list[str]:
    """The tokenizer's training text: a frozen snapshot shipped with the package.

    Frozen (not read from the live source tree) so the tiny model, and every test
    output that depends on it, stays the same across code changes. The snapshot is
    the project's own text (code, prompts, demo pages) as of its first release,
    documents separated by ASCII record separators.
    """
    packed = resources.files("websynthesis.backends").joinpath(_CORPUS_FILE).read_bytes()
    return gzip.decompress(packed).decode("utf-8").split("\x1e")


def _cache_key(spec: TinySpec, seed: int, corpus: list[str]) -> str:
    digest = hashlib.sha256()
    for text in corpus:
        digest.update(hashlib.sha256(text.encode()).digest())
    key = {
        "spec": asdict(spec),
        "seed": seed,
        "corpus": digest.hexdigest(),
        "template": CHAT_TEMPLATE,
        "versions": [torch.__version__, transformers.__version__, tokenizers.__version__],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _write_model(out: Path, spec: TinySpec, seed: int, corpus: list[str]) -> None:
    tokenizer = _train_tokenizer(corpus, spec.tokenizer_vocab_size)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in (PAD, IM_START, IM_END)}
    config = Qwen2Config(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rope_theta=1_000_000.0,
        initializer_range=spec.initializer_range,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=ids[IM_END],
        pad_token_id=ids[PAD],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=None, eos_token_id=ids[IM_END], pad_token_id=ids[PAD]
    )
    model.save_pretrained(out)
    # The template goes into tokenizer_config.json, where Qwen's repositories have it.
    tokenizer.save_pretrained(out, save_jinja_files=False)


def _train_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Qwen2's byte-level BPE pipeline, trained on ``corpus`` (deterministic)."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
