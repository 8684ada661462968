"""Runs INSIDE the reference environment (torch, transformers 4.26.1, alexa-teacher-models 1.0.1), driven by
``train_step.py``: the AlexaTM PyTorch model of the given architecture, trained as its release trains it
(``model(input_ids, attention_mask, decoder_input_ids, labels).loss``, backward, global-norm clipping,
``torch.optim.AdamW``), on a fixed random batch. Never imported by our code.

Protocol (one JSON object per line on stdout): after set-up and two warm-up steps it prints
``{"ready": ...}``; then each ``run N`` line on stdin times N steps and prints ``{"seconds": [...]}``;
``quit`` ends it. The driver alternates blocks of ours and of this worker, so both see the same load.
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
    torch.manual_seed(0)
    config = AlexaTMSeq2SeqConfig(**job["config"])
    model = AlexaTMSeq2SeqForConditionalGeneration(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    rng = np.random.RandomState(0)
    batch, inputs, targets = job["batch"], job["inputs"], job["targets"]
    input_ids = torch.tensor(rng.randint(4, config.vocab_size, size=(batch, inputs)))
    labels = torch.tensor(rng.randint(4, config.vocab_size, size=(batch, targets)))
    decoder_input_ids = torch.cat([torch.full((batch, 1), config.decoder_start_token_id), labels[:, :-1]], 1)
    attention_mask = torch.ones_like(input_ids)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                     labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return float(loss)

    for _ in range(2):
        step()
    print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "params": sum(p.numel() for p in model.parameters())}), flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        seconds = []
        for _ in range(int(command[1])):
            start = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - start)
        print(json.dumps({"seconds": seconds}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
