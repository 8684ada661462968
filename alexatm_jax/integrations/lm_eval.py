"""The ``alexatm_jax`` model type of EleutherAI's lm-evaluation-harness (the ``lm-eval`` extra).

Importing this module registers the model type, so from Python::

    import lm_eval
    from alexatm_jax.integrations import lm_eval as alexatm_lm_eval  # registers "alexatm_jax"
    lm_eval.simple_evaluate(model="alexatm_jax", model_args="path=RUN_OR_MODEL_DIR,batch_size=32",
                            tasks=["alexatm_debian_section"], task_manager=alexatm_lm_eval.task_manager())

lm-eval finds model types only in its registry (it has no plugin entry points), so its command line is
reached through this module, which registers the type and then runs lm-eval's own CLI with the same
arguments, adding ``--include_path TASKS_DIR`` (this package's task YAMLs, installed with it) unless the
command gives its own::

    python -m alexatm_jax.integrations.lm_eval --model alexatm_jax \
        --model_args path=RUN_DIR,mesh=data=2 --batch_size 32 --tasks alexatm_debian_section

``TASKS_DIR`` is ``tasks/lm_eval`` in a source checkout and ``alexatm_jax/task_cards/lm_eval`` once installed;
the YAMLs read the bundled data through the package, so they run from any working directory.

``model_args``: ``path`` (a training run or an exported model directory, local or ``gs://``; ``pretrained`` is
accepted too), ``step`` (a checkpoint of a run; default the newest), ``mesh`` (a spec such as ``data=2``; several
axes as ``data=2;tensor=2`` since lm-eval splits model_args at commas, or give model_args as JSON),
``batch_size`` (requests per compiled batch; lm-eval's ``--batch_size`` sets it too, ``auto`` means the default
16), ``max_gen_toks`` (default generation budget, 256), ``max_length`` (encoder tokens kept of a context and
the rolling window; default the model's positions), ``clm`` (true: every context in AlexaTM's CLM mode) and
``seed`` (sampling).

How lm-eval's requests map onto an encoder-decoder
--------------------------------------------------
``loglikelihood(context, continuation)``
    Encoder input = the context, tokenized like every prompt of this repository (``api.prompt_token_ids``: a
    leading ``"[CLM] "`` becomes the CLM token's id, then SentencePiece pieces, then EOS); decoder targets =
    the continuation's SentencePiece pieces, without EOS (it is scored as a prefix of the output, as for
    decoder-only models), teacher-forced after the decoder-start token. The value is the sum of
    ``log p(target_t | targets_<t, context)``, i.e. ``lm.score(lm.tokenize([context]), [sp.encode(continuation)])``
    and the per-choice scores of ``alexatm-jax eval``'s rank classification. ``is_greedy``: at every continuation
    position the arg-max of the same logits is the continuation's token.

    Whitespace: lm-eval puts the word-boundary space into the continuation (``"Section:"`` + ``" admin"``,
    ``target_delimiter``); trailing whitespace of a context is moved into the continuation, as lm-eval's own
    models do. Context and continuation are tokenized separately (there is no cross-boundary merge to worry
    about in an encoder-decoder), and SentencePiece starts every text with a word boundary, so ``"Section: "`` +
    ``"admin"`` scores exactly like ``"Section:"`` + ``" admin"``. A continuation with no pieces at all
    (whitespace only: SentencePiece drops it) scores ``(0.0, True)``.

    Contexts longer than ``max_length`` tokens lose their oldest tokens (the CLM token and EOS are kept), with
    a warning; a continuation longer than the decoder's positions is an error.

CLM mode
    AlexaTM reads a prompt that starts with its ``[CLM]`` token as "continue this text" (causal LM mode) and
    anything else as denoising. ``clm=true`` in model_args puts every context in CLM mode; a task can choose
    its own mode with ``description: "[CLM] "`` (lm-eval puts the description in front of the few-shot
    examples, where the CLM token belongs), as ``tasks/lm_eval/alexatm_debian_translation_en_de.yaml`` does.

``loglikelihood_rolling(text)``: implemented, soundly for an encoder-decoder
    The text's pieces are split into consecutive, disjoint windows of ``max_length`` decoder targets; each
    window is scored with the encoder reading ``[CLM]`` + the (up to ``max_length - 2``) pieces before the
    window + EOS, i.e. AlexaTM's CLM mode ("continue this text"), the first window with an empty prefix
    (``[CLM]`` + EOS). Every piece is scored exactly once, conditioned only on pieces before it, so the sum is
    ``log p(text)`` by the chain rule, with the same finite-context approximation as lm-eval's decoder-only
    windows (and far more context than lm-eval's Hugging Face seq2seq path, which gives the encoder one
    token). Without a ``[CLM]`` piece in the tokenizer the prefix alone is the encoder input (still a proper
    chain-rule decomposition, but not a conditioning the model was trained on; a warning says so).
    ``rolling_windows`` shows the windows.

``generate_until(context, gen_kwargs)``
    Requests are grouped by their generation settings, sorted by context length and decoded in batches
    through ``lm.generate`` (greedy by default; ``do_sample``/``temperature``/``top_k``/``top_p`` sample,
    ``num_beams`` beam-searches). ``max_gen_toks`` caps the new tokens (at most the decoder's positions). The
    text (cut at EOS) is cut at the first occurrence of any ``until`` string; to stop early, token sequences
    whose text contains a stop string also end a row inside the compiled loop (only an optimisation: the cut is
    done on the text). SentencePiece models normalise newlines to spaces (the bundled one does), so stop
    strings made only of whitespace (lm-eval's default ``"\\n\\n"``) never occur in the output: give
    generation tasks visible separators.

Batching and sharding: every request list is length-sorted (longest first, so a batch that does not fit
shows at once) and cut into batches of ``batch_size``; widths are rounded up to multiples of 32 (128 past
128 tokens) and batch rows to powers of two (padded with copies of a real row), so few shapes compile. Each
batch runs through the model's ``InferenceRunner`` partitioner: the batch split over the mesh's data axes,
parameters laid out by the run's logical-axis rules. Results come back in the requests' order. One lm-eval
process drives the whole mesh (lm-eval's ``rank``/``world_size`` stay 0/1).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import weakref
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from alexatm_jax.evaluation import cards
from alexatm_jax.evaluation.runner import pad_rows

MODEL_NAME = "alexatm_jax"
# The task YAMLs (tasks/lm_eval in a checkout, installed as alexatm_jax/task_cards/lm_eval).
TASKS_DIR = str(cards.TASKS_DIR / "lm_eval")
DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_GEN_TOKS = 256
LENGTH_BUCKET = 32
GENERATION_KEYS = ("until", "max_gen_toks", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p",
                   "num_beams", "length_penalty")

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------

def move_trailing_whitespace(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's convention: whitespace at the end of the context belongs to the continuation."""
    stripped = context.rstrip()
    return stripped, context[len(stripped):] + continuation


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """``text`` up to the earliest occurrence of any non-empty stop string."""
    end = len(text)
    for stop in until:
        if stop:
            index = text.find(stop)
            if 0 <= index < end:
                end = index
    return text[:end]


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        if value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if value.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    return bool(value)


def _batch_size(value: Any) -> int:
    if value is None or (isinstance(value, str) and value.strip().lower().startswith("auto")):
        if value is not None:
            log.warning("batch_size=%s: automatic batch sizes are not supported by alexatm_jax; using %d",
                        value, DEFAULT_BATCH_SIZE)
        return DEFAULT_BATCH_SIZE
    size = int(value)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {value!r}")
    return size


def _chunks(items: Sequence[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def _padded(rows: Sequence[Sequence[int]], pad_id: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ids and 0/1 mask; the width rounded up to a multiple of 32 (of 128 past 128 tokens),
    capped at ``limit``, so that few shapes compile."""
    longest = max(len(row) for row in rows)
    bucket = LENGTH_BUCKET if longest <= 4 * LENGTH_BUCKET else 4 * LENGTH_BUCKET
    return pad_rows(rows, pad_id, max(longest, min(-(-longest // bucket) * bucket, limit)))


def _fill_rows(arrays: Sequence[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """Rows padded to the next power of two (at most ``batch_size``) with copies of row 0, so that the last,
    shorter batches reuse a few compiled shapes."""
    rows = arrays[0].shape[0]
    target = min(1 << (rows - 1).bit_length(), max(batch_size, rows))
    if target == rows:
        return list(arrays)
    return [np.concatenate([a, np.repeat(a[:1], target - rows, axis=0)]) for a in arrays]


def _to_numpy(x) -> np.ndarray:
    from alexatm_jax.inference import _to_numpy as gather
    return gather(x)


_SCORE_FNS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _scores_and_greedy_fn(runner):
    """(params, tokens, segments, targets, weights) -> (log p per target [B, T], all-greedy [B]): the model's
    teacher-forced scoring (``EncoderDecoderModel.token_scores``: targets shifted right after the decoder-start
    token, log-softmax in float32, times the weights) plus the arg-max check, in one forward pass, compiled over
    the runner's partitioner. One per runner, so adapters over the same loaded model share compilations."""
    fn = _SCORE_FNS.get(runner)
    if fn is None:
        import jax.numpy as jnp

        from alexatm_jax.models import shift_right, token_log_probs_from_logits

        model, partitioner = runner.model, runner.partitioner
        start = model.config.decoder_start_token_id

        def scores(params, tokens, segments, targets, weights):
            logits = model.logits(params, {"encoder_input_tokens": tokens, "encoder_segment_ids": segments,
                                           "decoder_target_tokens": targets,
                                           "decoder_input_tokens": shift_right(targets, start)})
            token_scores = token_log_probs_from_logits(logits, targets) * weights
            greedy = jnp.all((jnp.argmax(logits, axis=-1) == targets) | (weights == 0), axis=-1)
            return token_scores, greedy

        fn = partitioner.partition(scores, (runner.param_shardings,) + (partitioner.data_sharding,) * 4,
                                   (partitioner.data_sharding, partitioner.sharding(("batch",))))
        _SCORE_FNS[runner] = fn
    return fn


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """One ``generate_until`` setting (hashable: requests that share it are decoded together)."""

    until: tuple[str, ...]
    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 1
    length_penalty: float = 0.6


# ----------------------------------------------------------------------------------------------------------
# The model type
# ----------------------------------------------------------------------------------------------------------

class AlexaTMJaxLM(LM):
    """An ``alexatm_jax`` model (``alexatm_jax.load``) as an lm-eval ``LM``; see the module docstring.

    Give ``path`` (and optionally ``step``, ``mesh``) to load one, or ``lm=`` an already loaded
    ``LanguageModel``."""

    def __init__(self, path: Optional[str] = None, mesh: Any = None, step: Optional[int] = None,
                 batch_size: Any = DEFAULT_BATCH_SIZE, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
                 max_length: Optional[int] = None, clm: Any = False, seed: int = 0, lm: Any = None,
                 pretrained: Optional[str] = None, device: Any = None, max_batch_size: Any = None):
        super().__init__()
        from alexatm_jax.api import CLM_TOKEN

        path = path if path is not None else pretrained
        if lm is None:
            if not path:
                raise ValueError("alexatm_jax needs model_args path=RUN_OR_MODEL_DIR (a training run or an exported "
                                 "model directory)")
            import alexatm_jax

            if isinstance(mesh, str):
                mesh = mesh.replace(";", ",") if mesh.strip() else None
            lm = alexatm_jax.load(path, mesh=mesh, step=None if step in (None, "") else int(step))
        elif path or mesh is not None or step is not None:
            raise ValueError("give either lm= (a loaded LanguageModel) or path=/mesh=/step=, not both")
        if lm.tokenizer is None:
            raise ValueError(f"{lm.path or 'the model'} has no tokenizer.model; lm-eval sends text, so the model "
                             f"directory needs the SentencePiece model it was trained with")
        if device not in (None, ""):
            log.info("alexatm_jax ignores device=%r: arrays are placed by the mesh", device)
        del max_batch_size  # lm-eval's auto batch-size search: not used

        self.lm = lm
        self.sp = lm.tokenizer
        self.config = lm.config
        self.positions = int(self.config.max_position_embeddings)
        self.max_length = self.positions if max_length in (None, "") else int(max_length)
        if not 3 <= self.max_length <= self.positions:
            raise ValueError(f"max_length must be in [3, {self.positions}] (the model's positions), got "
                             f"{max_length!r}")
        self.batch_size = _batch_size(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        if self.max_gen_toks < 1:
            raise ValueError(f"max_gen_toks must be >= 1, got {max_gen_toks!r}")
        self.clm = _as_bool(clm)
        self.seed = int(seed)
        self.clm_token = CLM_TOKEN
        clm_id = self.sp.piece_to_id(CLM_TOKEN)
        self.clm_id = clm_id if clm_id != self.sp.unk_id() and self.sp.id_to_piece(clm_id) == CLM_TOKEN else None
        if self.clm and self.clm_id is None:
            raise ValueError(f"clm=true but the tokenizer has no {CLM_TOKEN!r} piece")
        self._score_fn = None
        self._stop_ids: dict[str, list[tuple[int, ...]]] = {}
        self._warned: set[str] = set()

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: Optional[dict] = None) -> "AlexaTMJaxLM":
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: Optional[dict] = None) -> "AlexaTMJaxLM":
        # lm-eval adds its own batch_size / device / max_batch_size (its CLI always passes batch_size, 1 unless
        # --batch_size is given); the same key in model_args wins instead of being a duplicate-argument error.
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**extra, **dict(arg_dict)})

    def get_model_info(self) -> dict:
        return {"model_path": self.lm.path, "partitioner": repr(self.lm.partitioner),
                "max_length": self.max_length, "clm": self.clm}

    def _warn_once(self, key: str, message: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    # ---- Tokens. ----
    def context_ids(self, context: str, clm: Optional[bool] = None) -> list[int]:
        """Encoder input ids of a context (CLM token in front when in CLM mode, EOS at the end), cut to
        ``max_length`` by dropping its oldest tokens."""
        from alexatm_jax.api import prompt_token_ids

        if (self.clm if clm is None else clm) and not (context.startswith(self.clm_token + " ")
                                                        or context == self.clm_token):
            context = f"{self.clm_token} {context}"
        ids = prompt_token_ids(self.sp, context, self.config.eos_token_id)
        if len(ids) <= self.max_length:
            return ids
        self._warn_once("truncated", "alexatm_jax: contexts longer than max_length=%d tokens lose their oldest "
                        "tokens (first one: %d tokens)", self.max_length, len(ids))
        head = 1 if self.clm_id is not None and ids[0] == self.clm_id else 0
        keep = self.max_length - head - 1
        return ids[:head] + ids[len(ids) - 1 - keep:]

    def continuation_ids(self, continuation: str) -> list[int]:
        """Decoder target ids of a continuation: its SentencePiece pieces (no EOS)."""
        return list(self.sp.encode(continuation))

    def rolling_windows(self, text: str) -> list[tuple[list[int], list[int]]]:
        """(encoder ids, decoder targets) per window of ``loglikelihood_rolling`` (see the module docstring)."""
        tokens = list(self.sp.encode(text))
        head = [self.clm_id] if self.clm_id is not None else []
        if not head:
            self._warn_once("rolling_clm", "alexatm_jax: the tokenizer has no [CLM] piece; loglikelihood_rolling "
                            "conditions each window on the plain preceding text")
        eos = self.config.eos_token_id
        context = self.max_length - len(head) - 1
        windows = []
        for start in range(0, len(tokens), self.max_length):
            prefix = tokens[max(0, start - context):start]
            windows.append((head + prefix + [eos], tokens[start:start + self.max_length]))
        return windows

    # ---- Scoring. ----
    def _compiled_scores(self):
        if self._score_fn is None:
            self._score_fn = _scores_and_greedy_fn(self.lm.runner)
        return self._score_fn

    def score_pairs(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], disable_tqdm: bool = True,
                    desc: str = "alexatm_jax loglikelihood") -> list[tuple[float, bool]]:
        """(encoder ids, target ids) pairs -> (summed log-likelihood, is_greedy) each, in the given order."""
        for enc, tgt in pairs:
            if len(tgt) > self.positions:
                raise ValueError(f"a continuation of {len(tgt)} tokens does not fit the decoder's {self.positions} "
                                 f"positions")
            if len(enc) > self.positions:
                raise ValueError(f"an encoder input of {len(enc)} tokens exceeds the model's {self.positions} "
                                 f"positions")
        results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
        order = sorted((i for i, (_, tgt) in enumerate(pairs) if len(tgt)),
                       key=lambda i: (-(len(pairs[i][0]) + len(pairs[i][1])), i))
        if not order:
            return results
        fn = self._compiled_scores()
        pad = self.config.pad_token_id
        partitioner = self.lm.partitioner
        with tqdm(total=len(order), desc=desc, disable=disable_tqdm) as bar:
            for batch in _chunks(order, self.batch_size):
                ids, mask = _padded([pairs[i][0] for i in batch], pad, self.positions)
                targets, weights = _padded([pairs[i][1] for i in batch], pad, self.positions)
                arrays = _fill_rows([ids, mask, targets, weights.astype(np.float32)], self.batch_size)
                arrays, _ = partitioner.pad_batch(arrays, [pad, 0, pad, 0.0])
                token_scores, greedy = fn(self.lm.params, *arrays)
                token_scores, greedy = _to_numpy(token_scores), _to_numpy(greedy)
                for row, i in enumerate(batch):
                    # float32 row sums, as ``lm.score`` sums ``lm.token_scores``.
                    results[i] = (float(token_scores[row].sum()), bool(greedy[row]))
                bar.update(len(batch))
        return results

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = []
        for request in requests:
            context, continuation = request.args[0], request.args[1]
            context, continuation = move_trailing_whitespace(context, continuation)
            pairs.append((self.context_ids(context), self.continuation_ids(continuation)))
        results = self.score_pairs(pairs, disable_tqdm=disable_tqdm)
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        pairs, owners = [], []
        for index, request in enumerate(requests):
            for window in self.rolling_windows(request.args[0]):
                pairs.append(window)
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (value, _) in zip(owners, self.score_pairs(pairs, disable_tqdm=disable_tqdm,
                                                              desc="alexatm_jax loglikelihood_rolling")):
            totals[owner] += value
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # ---- Generation. ----
    def generation_request(self, gen_kwargs: Optional[dict]) -> GenerationRequest:
        """lm-eval's ``gen_kwargs`` -> the decoding settings (unknown keys are an error, not ignored)."""
        kwargs = dict(gen_kwargs or {})
        unknown = sorted(set(kwargs) - set(GENERATION_KEYS))
        if unknown:
            raise ValueError(f"alexatm_jax generate_until does not understand gen_kwargs {unknown}; it takes "
                             f"{list(GENERATION_KEYS)}")
        until = kwargs.get("until") or ()
        until = (until,) if isinstance(until, str) else tuple(str(u) for u in until)
        max_new = int(kwargs.get("max_gen_toks", kwargs.get("max_new_tokens", self.max_gen_toks)))
        if max_new < 1:
            raise ValueError(f"max_gen_toks must be >= 1, got {max_new}")
        if max_new > self.positions:
            self._warn_once("max_gen_toks", "alexatm_jax: max_gen_toks=%d exceeds the decoder's %d positions; "
                            "generating %d", max_new, self.positions, self.positions)
            max_new = self.positions
        temperature = float(kwargs.get("temperature", 1.0))
        # As in Hugging Face's generate: sampling only when asked, and temperature 0 means greedy.
        do_sample = _as_bool(kwargs.get("do_sample", False)) and temperature > 0
        return GenerationRequest(
            until=until, max_new_tokens=max_new, do_sample=do_sample, temperature=temperature if do_sample else 1.0,
            top_k=int(kwargs.get("top_k") or 0) if do_sample else 0,
            top_p=float(kwargs.get("top_p") or 1.0) if do_sample else 1.0,
            num_beams=int(kwargs.get("num_beams") or 1),
            length_penalty=float(kwargs.get("length_penalty", 0.6)))

    def stop_token_sequences(self, stop: str) -> list[tuple[int, ...]]:
        """Token sequences whose text contains ``stop``: the stop string's own encodings and, for stop strings
        of one or two characters, every single text piece containing it. Ending a row on them loses nothing,
        since the output is cut at ``stop`` anyway. None for whitespace-only stops (SentencePiece cannot
        produce them)."""
        if stop in self._stop_ids:
            return self._stop_ids[stop]
        found: set[tuple[int, ...]] = set()
        if stop.strip():
            for variant in (stop, " " + stop):
                ids = tuple(self.sp.encode(variant))
                if ids and stop in self.sp.decode(list(ids)):
                    found.add(ids)
            if len(stop) <= 2:
                sp = self.sp
                for i in range(sp.get_piece_size()):
                    if (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i)):
                        continue
                    if stop in sp.id_to_piece(i).replace("\u2581", " "):
                        found.add((i,))
        self._stop_ids[stop] = sorted(found)
        return self._stop_ids[stop]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        import jax

        groups: dict[GenerationRequest, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(self.generation_request(request.args[1]), []).append(index)
        outputs: list[Optional[str]] = [None] * len(requests)
        pad = self.config.pad_token_id
        calls = 0
        with tqdm(total=len(requests), desc="alexatm_jax generate_until", disable=disable_tqdm) as bar:
            for setting, members in groups.items():
                contexts = {i: self.context_ids(requests[i].args[0]) for i in members}
                order = sorted(members, key=lambda i: (-len(contexts[i]), i))
                stops = sorted({ids for stop in setting.until for ids in self.stop_token_sequences(stop)})
                options = dict(max_new_tokens=setting.max_new_tokens, num_beams=setting.num_beams,
                               length_penalty=setting.length_penalty, stop_sequences=[list(s) for s in stops] or None)
                if setting.do_sample:
                    options.update(do_sample=True, temperature=setting.temperature, top_k=setting.top_k,
                                   top_p=setting.top_p)
                for batch in _chunks(order, self.batch_size):
                    ids, mask = _padded([contexts[i] for i in batch], pad, self.positions)
                    ids, mask = _fill_rows([ids, mask], self.batch_size)
                    if setting.do_sample:
                        options["rng"] = jax.random.fold_in(jax.random.PRNGKey(self.seed), calls)
                    calls += 1
                    new_tokens = self.lm.generate(ids, mask, **options)
                    for i, text in zip(batch, self.lm.detokenize(np.asarray(new_tokens)[:len(batch)])):
                        outputs[i] = cut_at_stops(text, setting.until)
                        self.cache_hook.add_partial("generate_until", requests[i].args, outputs[i])
                    bar.update(len(batch))
        return outputs  # type: ignore[return-value]


def task_manager(**kwargs):
    """lm-eval's ``TaskManager`` that also indexes this package's task YAMLs (``TASKS_DIR``); ``kwargs`` are
    TaskManager's (``include_defaults=False`` skips lm-eval's own few thousand tasks). An ``include_path`` of
    the caller's is indexed after ours, so a task of the same name there replaces ours."""
    from lm_eval.tasks import TaskManager

    extra = kwargs.pop("include_path", None)
    extra = [] if extra is None else list(extra) if isinstance(extra, (list, tuple)) else [extra]
    return TaskManager(include_path=[TASKS_DIR, *extra], **kwargs)


def with_tasks_dir(argv: Sequence[str]) -> list[str]:
    """lm-eval command-line arguments with ``--include_path TASKS_DIR`` added when they name none (every
    lm-eval subcommand, ``run`` / ``ls`` / ``validate``, accepts it; its value is one path). Help requests and
    an empty command line are left as they are."""
    argv = list(argv)
    if not argv or argv in (["run"], ["ls"], ["validate"]) or any(a in ("-h", "--help") for a in argv):
        return argv
    if any(a == "--include_path" or a.startswith("--include_path=") for a in argv):
        return argv
    return argv + ["--include_path", TASKS_DIR]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """lm-eval's command line (``lm_eval ...`` / ``lm-eval run ...``) with the ``alexatm_jax`` model type
    registered and this package's tasks included: ``python -m alexatm_jax.integrations.lm_eval --model
    alexatm_jax --model_args path=DIR --tasks alexatm_bundled ...``."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = [sys.argv[0]] + with_tasks_dir(sys.argv[1:] if argv is None else argv)
    cli_evaluate()
    return 0


def _register() -> None:
    from lm_eval.api.registry import get_model

    try:
        register_model(MODEL_NAME)(AlexaTMJaxLM)
    except (ValueError, AssertionError):
        # Already registered: fine when it is this class (a reload), an error for someone else's.
        existing = get_model(MODEL_NAME)
        if (getattr(existing, "__module__", None), getattr(existing, "__name__", None)) != (
                __name__, AlexaTMJaxLM.__name__):
            raise


if __name__ == "__main__":
    # Run with -m, this file is the module __main__: the importable module registers its class (rather than
    # this copy registering another one).
    import importlib

    sys.exit(importlib.import_module("alexatm_jax.integrations.lm_eval").main())
else:
    _register()
