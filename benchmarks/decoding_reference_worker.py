"""Runs INSIDE the reference environment (torch, transformers 4.26.1, alexa-teacher-models 1.0.1), driven by
``decoding.py``: builds a seeded random AlexaTM model, saves it in the release's format (our side converts and
loads that very checkpoint), and times the reference's ``generate`` on a given batch. Never imported by our code.

Protocol (one JSON object per line on stdout): after set-up it prints ``{"ready": ...}``; then each line
``run MODE N`` (MODE: ``greedy``, ``beam`` or ``greedy_shipped``) times N calls and prints
``{"seconds": [...], "tokens": [[...], ...]}``; ``quit`` ends it.

Modes: ``greedy`` and ``beam`` use the model's KV cache. With transformers 4.26.1 the release's
``prepare_inputs_for_generation`` reads its cache from a ``past`` argument, but ``generate`` passes
``past_key_values``, so as shipped the cache is dropped and every step re-runs the decoder over the whole
prefix (``greedy_shipped``). The cached modes rename the argument, nothing else: the stronger PyTorch peer.
"""

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
    shipped = model.prepare_inputs_for_generation

    def with_cache(decoder_input_ids, past=None, past_key_values=None, **kwargs):
        return shipped(decoder_input_ids, past=past if past is not None else past_key_values, **kwargs)

    def generate(mode, max_new_tokens):
        model.prepare_inputs_for_generation = shipped if mode == "greedy_shipped" else with_cache
        beams = job["num_beams"] if mode == "beam" else 1
        with torch.no_grad():
            return model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                  do_sample=False, num_beams=beams, early_stopping=False,
                                  length_penalty=job["length_penalty"])

    for mode in ("greedy", "beam"):
        generate(mode, 2)  # torch has nothing to compile: this pays first-call allocations
    print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        mode, repeats = command[1], int(command[2])
        seconds, generated = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            generated = generate(mode, job["max_new_tokens"])
            seconds.append(time.perf_counter() - start)
        print(json.dumps({"seconds": seconds, "tokens": generated[:, 1:].tolist()}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
