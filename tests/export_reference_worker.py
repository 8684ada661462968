"""Runs INSIDE the reference environment: loads ``alexatm-jax export-pytorch`` outputs with the reference itself.

Called by ``tests/test_export_pytorch.py`` through subprocess (never imported by our tests). Input: a JSON job
file with a list of checks. For each check it loads the export with
``AlexaTMSeq2SeqForConditionalGeneration.from_pretrained`` (recording what the loader reports missing,
unexpected or mismatched), runs logits and greedy ``generate`` on the check's batch, and, when the check
names the original checkpoint, compares the exported tensors with the original ones bit for bit. Results:
one .npz of outputs and one .json report per check.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from alexa_teacher_models import AlexaTMSeq2SeqConfig, AlexaTMSeq2SeqForConditionalGeneration


def state_dict_of(directory: Path) -> dict:
    """Every tensor in a checkpoint directory's weight files (.bin or .safetensors, sharded or not)."""
    from safetensors.torch import load_file

    state = {}
    for path in sorted(directory.iterdir()):
        if path.suffix == ".safetensors":
            state.update(load_file(str(path)))
        elif path.suffix == ".bin":
            state.update(torch.load(str(path), map_location="cpu", weights_only=True))
    return state


def compare_states(original: dict, exported: dict) -> list:
    """Differences between two state dicts (keys, dtypes, shapes, bits); empty when identical."""
    problems = []
    if set(original) != set(exported):
        problems.append(f"keys: only original {sorted(set(original) - set(exported))}, "
                        f"only exported {sorted(set(exported) - set(original))}")
    for key in sorted(set(original) & set(exported)):
        a, b = original[key], exported[key]
        if a.dtype != b.dtype or a.shape != b.shape:
            problems.append(f"{key}: {a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}")
        elif not torch.equal(a.contiguous().view(torch.uint8) if a.is_floating_point() else a,
                             b.contiguous().view(torch.uint8) if b.is_floating_point() else b):
            problems.append(f"{key}: values differ (max abs {float((a.double() - b.double()).abs().max())})")
    return problems


def run_check(check: dict) -> dict:
    destination = Path(check["destination"])
    report = {"files": sorted(p.name for p in destination.iterdir())}
    config = AlexaTMSeq2SeqConfig.from_pretrained(str(destination))
    report["config"] = {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))}
    model, info = AlexaTMSeq2SeqForConditionalGeneration.from_pretrained(str(destination), output_loading_info=True)
    model = model.eval()
    report["loading_info"] = {k: [str(x) for x in v] for k, v in info.items()}
    report["parameter_dtypes"] = sorted({str(p.dtype) for p in model.parameters()})
    exported = state_dict_of(destination)
    report["exported_dtypes"] = {k: str(v.dtype) for k, v in exported.items()}
    if check.get("original"):
        report["differences"] = compare_states(state_dict_of(Path(check["original"])), exported)
    tokenizer = destination / "20b_tokenizer.model"
    if tokenizer.is_file():
        import sentencepiece as spm

        report["tokenized"] = spm.SentencePieceProcessor(model_file=str(tokenizer)).encode(check["text"])
    batch = {k: torch.tensor(np.asarray(v)) for k, v in check["batch"].items()}
    out = {}
    with torch.no_grad():
        out["logits"] = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              decoder_input_ids=batch["decoder_input_ids"]).logits.float().numpy()
        generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   max_new_tokens=check["max_new_tokens"], do_sample=False, num_beams=1)
    out["generated"] = generated[:, 1:].numpy()
    out["decoder_start"] = generated[:, 0].numpy()
    np.savez(check["output_file"], **out)
    return report


def main(job_path):
    job = json.load(open(job_path))
    for check in job["checks"]:
        report = run_check(check)
        Path(check["report_file"]).write_text(json.dumps(report))
        print(f"checked {check['destination']}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
