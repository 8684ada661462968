"""Runs INSIDE the reference environment (torch + transformers 4.26.1 + alexa_teacher_models 1.0.1).

Never imported by our tests: they call it by subprocess so that the reference's old transformers never
meets our environment. Input: a JSON job file. For each model in the job it builds a random
AlexaTMSeq2SeqForConditionalGeneration, saves it with ``save_pretrained`` as sharded ``pytorch_model-*.bin``
plus index (the released checkpoint's format), and records encoder outputs, logits, greedy ``generate``
outputs and target log-likelihoods on the job's batches, in an .npz beside the checkpoint.
"""

import json
import sys
import time

import numpy as np
import torch
from alexa_teacher_models import AlexaTMSeq2SeqConfig, AlexaTMSeq2SeqForConditionalGeneration


def peaked_random_init(model, seed):
    """Re-draws every weight so that outputs are far from uniform: greedy argmax then never hinges on float
    rounding, and every parameter (norm affines, biases, final_logits_bias) is non-trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("position_ids"):
                continue
            if "layer_norm" in name or "layernorm" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                tensor.copy_(base + 0.1 * torch.randn(tensor.shape, generator=generator))
            elif name.endswith("bias"):
                tensor.copy_(0.2 * torch.randn(tensor.shape, generator=generator))
            else:
                std = 1.0 if ("embed" in name or "shared" in name) else 2.0 / max(tensor.shape[-1], 1) ** 0.5
                tensor.copy_(std * torch.randn(tensor.shape, generator=generator))


def main(job_path):
    job = json.load(open(job_path))
    for spec in job["models"]:
        started = time.time()
        config = AlexaTMSeq2SeqConfig(**spec["config"])
        torch.manual_seed(spec["seed"])
        model = AlexaTMSeq2SeqForConditionalGeneration(config).eval()
        peaked_random_init(model, spec["seed"])
        if config.tie_word_embeddings:
            model.tie_weights()
        model.save_pretrained(spec["checkpoint_dir"], max_shard_size=spec.get("max_shard_size", "200KB"))
        batch = {k: torch.tensor(np.asarray(v)) for k, v in spec["batch"].items()}
        out = {}
        with torch.no_grad():
            encoder = model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            out["encoder_output"] = encoder.last_hidden_state.numpy()
            result = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           decoder_input_ids=batch["decoder_input_ids"])
            out["logits"] = result.logits.numpy()
            # Log-likelihood of targets under teacher forcing; decoder inputs = start token + labels[:-1].
            labels = batch["labels"]
            start_id = config.decoder_start_token_id
            start_id = config.bos_token_id if start_id is None else start_id
            decoder_inputs = torch.cat([torch.full_like(labels[:, :1], start_id), labels[:, :-1]], dim=1)
            scored = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           decoder_input_ids=decoder_inputs)
            logprobs = torch.log_softmax(scored.logits.float(), dim=-1)
            token_lp = logprobs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
            out["target_logprob"] = (token_lp * batch["label_mask"]).sum(-1).numpy()
            start = time.time()
            generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                       max_new_tokens=spec["max_new_tokens"], do_sample=False, num_beams=1)
            out["generate_seconds"] = np.float64(time.time() - start)
        out["generated"] = generated[:, 1:].numpy()  # drop the decoder start token
        out["decoder_start"] = generated[:, 0].numpy()
        np.savez(spec["output_file"], **out)
        print(f"reference model {spec['name']}: built, saved, run in {time.time() - started:.1f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
