"""Runs INSIDE the reference environment (torch, transformers 4.26.1, alexa-teacher-models 1.0.1), driven by
``decoding_greedy.py``: builds a seeded random AlexaTM model, saves it in the release's format, and times the
reference's greedy ``generate`` on a given batch. Never imported by our code."""

import json
import sys
import time

import numpy as np
import torch
from alexa_teacher_models import AlexaTMSeq2SeqConfig, AlexaTMSeq2SeqForConditionalGeneration


def main(job_path):
    job = json.load(open(job_path))
    torch.set_num_threads(job["threads"])
    torch.manual_seed(job["seed"])
    config = AlexaTMSeq2SeqConfig(**job["config"])
    model = AlexaTMSeq2SeqForConditionalGeneration(config).eval()
    with torch.no_grad():
        # Keep EOS out of reach so that every row decodes exactly max_new_tokens on both sides.
        model.final_logits_bias[..., config.eos_token_id] = -1.0e4
    model.save_pretrained(job["checkpoint_dir"])
    input_ids = torch.tensor(np.asarray(job["input_ids"]))
    attention_mask = torch.tensor(np.asarray(job["attention_mask"]))

    def run(repeats):
        timings, generated = [], None
        with torch.no_grad():
            # Warm-up: a two-token call (torch has nothing to compile; this pays first-call allocations).
            model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=2, do_sample=False,
                           num_beams=1)
            for _ in range(repeats):
                start = time.perf_counter()
                generated = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                           max_new_tokens=job["max_new_tokens"], do_sample=False, num_beams=1)
                timings.append(time.perf_counter() - start)
        return timings, generated[:, 1:].numpy()

    results = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    # 1. As shipped. With transformers 4.26.1 the model's prepare_inputs_for_generation reads its cache from a
    #    `past` argument, but generate passes `past_key_values`: the cache is dropped and every step re-runs
    #    the decoder over the whole prefix.
    results["shipped_seconds"], shipped = run(job["shipped_repeats"])
    np.save(job["tokens_file"], shipped)
    # 2. The same model with its KV cache reconnected (the argument renamed): a stronger PyTorch peer.
    original = model.prepare_inputs_for_generation

    def with_cache(decoder_input_ids, past=None, past_key_values=None, **kwargs):
        return original(decoder_input_ids, past=past if past is not None else past_key_values, **kwargs)

    model.prepare_inputs_for_generation = with_cache
    results["cached_seconds"], cached = run(job["repeats"])
    results["cached_equals_shipped"] = bool((cached == shipped).all())
    json.dump(results, open(job["timings_file"], "w"))

if __name__ == "__main__":
    main(sys.argv[1])
