#!/usr/bin/env python
"""Decoding throughput: alexatm_jax ``generate`` against the AlexaTM PyTorch reference's ``generate`` on the same
weights and batch, interleaved on the same machine, and against the memory-bandwidth bound of a decoder step.

    PYTHONPATH=. python benchmarks/decoding.py [--size small] [--rounds 3] [--modes greedy beam]

Sizes: ``small`` (d_model 512, 6+6 layers, 8 heads, FFN 2048, vocabulary 32000) and ``tiny`` (d_model 256,
4+4 layers, 4 heads, FFN 1024, vocabulary 8000); batch 8, 128 input tokens, 64 new tokens (beam search: 4 beams).

How it is measured:
- the reference worker builds a seeded random AlexaTM model and saves it in the release's format; ours converts
  that checkpoint (``alexatm_jax.checkpoints.convert_pytorch``) and loads it with ``alexatm_jax.load``. EOS is
  out of reach (a -1e4 logit bias, part of the saved weights), so both sides decode exactly ``--new-tokens``;
- both are long-lived processes, set up and warmed up once; each of ``--rounds`` rounds then runs every
  implementation and mode in turn, so all see the same load. The 1-minute load average before each block is
  recorded. Figures are medians over all runs;
- the reference is timed with its KV cache reconnected (the peer) and as shipped (its cache is dropped by
  transformers 4.26.1's ``generate``; one run per round: it is slow);
- the bound: bytes one decoder step must read (the decoder weights it uses, the LM head, the self-attention
  and cross-attention caches, from the loaded parameters' and caches' real sizes) over the bandwidth of a
  streaming read measured here (a jitted sum over 1 GiB, best of 10 at start-up and of 5 after each of our
  timed blocks, since a shared machine's bandwidth moves within minutes; the median is used). Our step time is
  (time of ``--new-tokens`` tokens - time of 1 token) / (``--new-tokens`` - 1): the encoder, the cache set-up
  and the host transfers cancel out.

Writes ``benchmarks/results/decoding_<size>.{json,md}`` (machine, command, date, load, figures).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from bench_workers import Worker, write_results  # noqa: E402
DEFAULT_REFERENCE_PYTHON = HERE.parent / ".venv-ref" / "bin" / "python"
SIZES = {
    "small": dict(vocab=32000, d_model=512, layers=6, heads=8, ffn=2048),
    "tiny": dict(vocab=8000, d_model=256, layers=4, heads=4, ffn=1024),
}


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """The decoding shape options (model size, batch, lengths), shared with profile_decoding.py."""
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--input-length", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_arguments(parser)
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--modes", nargs="*", default=["greedy", "beam"], choices=("greedy", "beam"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per implementation, mode and round")
    parser.add_argument("--no-shipped", action="store_true", help="skip the (slow) reference as shipped")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default=None, help="default: benchmarks/results/decoding_<size>")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run our worker
    return parser.parse_args(argv)


def streaming_bandwidth(gib: float = 1.0, repeats: int = 10) -> float:
    """Bytes/s of a jitted sum over a ``gib`` GiB float32 array (best of ``repeats``): what a streaming read
    achieves on this machine with XLA's own threads."""
    import jax
    import jax.numpy as jnp

    from alexatm_jax.training.flops import best_call_seconds
    array = jnp.ones((int(gib * 2 ** 30) // 4,), jnp.float32)
    return array.nbytes / best_call_seconds(jax.jit(jnp.sum), array, repeats=repeats)


def bytes_per_decoder_step(params, config, rows: int, input_length: int, max_new_tokens: int,
                           examples: int) -> dict:
    """What one incremental decoder step reads, by part, in bytes: every decoder-layer weight except the
    cross-attention key/value projections (applied once, to the encoder output), the final norm, the LM head
    and its bias, one embedding row per token, and the caches (self-attention keys and values over the whole
    buffer for each of the ``rows`` decoder rows, cross-attention keys and values over the input once per
    example: the beams of an example share them)."""
    import jax

    itemsize = np.dtype(config.dtype).itemsize
    decoder = params["decoder"]
    layer_bytes = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(decoder)[0]:
        names = [str(getattr(k, "key", k)) for k in path]
        if names[0].startswith("layers"):
            if "encoder_decoder_attention" in names and ("key" in names or "value" in names):
                continue
            layer_bytes += leaf.nbytes
    head_tree = decoder.get("logits_dense")
    head = sum(x.nbytes for x in jax.tree_util.tree_leaves(head_tree)) + (
        decoder["final_logits_bias"].nbytes if "final_logits_bias" in decoder else 0)
    if head_tree is None:  # tied head: the decoder's token table (the encoder's when shared)
        table = params.get("decoder_token_embedder", params["encoder_token_embedder"])
        head += table["embedding"].nbytes
    layers, d_model = config.decoder_layers, config.d_model
    self_cache = 2 * layers * rows * max_new_tokens * d_model * itemsize
    cross_cache = 2 * layers * examples * input_length * d_model * itemsize
    embeddings = 2 * rows * d_model * itemsize
    return {"decoder_layer_weights": layer_bytes, "lm_head": head, "self_attention_cache": self_cache,
            "cross_attention_cache": cross_cache, "embedding_rows": embeddings,
            "total": layer_bytes + head + self_cache + cross_cache + embeddings}


def our_worker(job_path):
    """Our side of the protocol (see decoding_reference_worker.py)."""
    import jax

    import alexatm_jax
    from alexatm_jax.checkpoints.convert_pytorch import convert

    job = json.loads(Path(job_path).read_text())
    convert(job["checkpoint_dir"], job["converted_dir"])
    lm = alexatm_jax.load(job["converted_dir"])
    input_ids, attention_mask = np.asarray(job["input_ids"]), np.asarray(job["attention_mask"])

    def generate(mode, max_new_tokens):
        beams = job["num_beams"] if mode == "beam" else 1
        return lm.generate(input_ids, attention_mask, max_new_tokens=max_new_tokens, num_beams=beams,
                           length_penalty=job["length_penalty"])

    compile_seconds = {}
    for mode in job["modes"]:
        start = time.perf_counter()
        generate(mode, job["max_new_tokens"])
        compile_seconds[mode] = time.perf_counter() - start
        generate(mode, 1)
    rows = {mode: job["batch"] * (job["num_beams"] if mode == "beam" else 1) for mode in job["modes"]}
    step_bytes = {mode: bytes_per_decoder_step(lm.params, lm.config, rows[mode], job["input_length"],
                                               job["max_new_tokens"], examples=job["batch"])
                  for mode in job["modes"]}
    print(json.dumps({"ready": True, "jax": jax.__version__, "compile_and_first_call_s": compile_seconds,
                      "bytes_per_step": step_bytes, "config": lm.config.to_dict(),
                      "bandwidth_bytes_per_s": streaming_bandwidth()}), flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        mode, repeats = command[1], int(command[2])
        seconds, one_token, tokens = [], [], None
        for _ in range(repeats):
            start = time.perf_counter()
            tokens = generate(mode, job["max_new_tokens"])
            seconds.append(time.perf_counter() - start)
            start = time.perf_counter()
            generate(mode, 1)
            one_token.append(time.perf_counter() - start)
        # The bandwidth this machine gives at this moment: on a shared machine it moves by 1.5x within minutes,
        # so the bound is taken beside every timed block, not once.
        print(json.dumps({"seconds": seconds, "one_token_seconds": one_token,
                          "bandwidth_bytes_per_s": streaming_bandwidth(repeats=5),
                          "tokens": np.asarray(tokens).tolist()}), flush=True)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return our_worker(args.worker)
    reference_python = os.environ.get("ALEXATM_REFERENCE_PYTHON") or str(DEFAULT_REFERENCE_PYTHON)
    if not Path(reference_python).is_file():
        sys.exit(f"reference environment missing ({reference_python}): `make refenv` or set ALEXATM_REFERENCE_PYTHON")
    size = SIZES[args.size]
    rng = np.random.RandomState(0)
    input_ids = rng.randint(3, size["vocab"], size=(args.batch, args.input_length))
    config = dict(vocab_size=size["vocab"], d_model=size["d_model"], encoder_layers=size["layers"],
                  decoder_layers=size["layers"], encoder_attention_heads=size["heads"],
                  decoder_attention_heads=size["heads"], encoder_ffn_dim=size["ffn"], decoder_ffn_dim=size["ffn"],
                  max_position_embeddings=max(512, args.input_length), decoder_start_token_id=2)
    work = Path(tempfile.mkdtemp(prefix="decoding_bench_"))
    job = {"config": config, "seed": 0, "threads": args.threads, "input_ids": input_ids.tolist(),
           "attention_mask": np.ones_like(input_ids).tolist(), "max_new_tokens": args.new_tokens,
           "num_beams": args.num_beams, "length_penalty": 0.6, "modes": args.modes, "batch": args.batch,
           "input_length": args.input_length, "checkpoint_dir": str(work / "hf"), "converted_dir": str(work / "jax")}
    (work / "job.json").write_text(json.dumps(job))
    ref_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "XLA_", "JAX_"))}
    ref_env.update(TRANSFORMERS_OFFLINE="1", HF_HUB_OFFLINE="1")
    reference = Worker("reference", [reference_python, str(HERE / "decoding_reference_worker.py"),
                                     str(work / "job.json")], ref_env)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env["PYTHONPATH"] = str(HERE.parent)
    ours = Worker("ours", [sys.executable, __file__, "--worker", str(work / "job.json")], env)

    blocks = [("ours", mode) for mode in args.modes] + [("reference", mode) for mode in args.modes]
    if not args.no_shipped:
        blocks.append(("reference", "greedy_shipped"))
    results = {block: {"seconds": [], "one_token_seconds": []} for block in blocks}
    tokens, loads, bandwidths = {}, [], [ours.info["bandwidth_bytes_per_s"]]
    for round_index in range(args.rounds):
        for who, mode in blocks:
            loads.append(os.getloadavg()[0])
            worker = ours if who == "ours" else reference
            reply = worker.request("run", mode, 1 if mode == "greedy_shipped" else args.repeats)
            results[(who, mode)]["seconds"] += reply["seconds"]
            results[(who, mode)]["one_token_seconds"] += reply.get("one_token_seconds", [])
            tokens[(who, mode)] = np.asarray(reply["tokens"])
            if "bandwidth_bytes_per_s" in reply:
                bandwidths.append(reply["bandwidth_bytes_per_s"])
        print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(
            f"{who} {mode} {statistics.median(r['seconds']):.3f}s" for (who, mode), r in results.items()), flush=True)
    ours_info, reference_info = ours.info, reference.info
    ours.close(), reference.close()

    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": "python benchmarks/decoding.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpu_count": os.cpu_count(), "jax": ours_info["jax"], "torch": reference_info["torch"],
                          "torch_threads": reference_info["threads"]},
              "load_average_1m": {"min": min(loads), "max": max(loads), "each_block": loads},
              "size": args.size, "model": size, "batch": args.batch, "input_length": args.input_length,
              "new_tokens": args.new_tokens, "num_beams": args.num_beams, "rounds": args.rounds,
              "streaming_bandwidth_gb_per_s": statistics.median(bandwidths) / 1e9,
              "streaming_bandwidth_each_gb_per_s": [b / 1e9 for b in bandwidths],
              "ours_compile_and_first_call_s": ours_info["compile_and_first_call_s"], "modes": {}}
    bandwidth = statistics.median(bandwidths)
    for mode in args.modes:
        new_tokens = args.batch * args.new_tokens
        ours_s = statistics.median(results[("ours", mode)]["seconds"])
        one_s = statistics.median(results[("ours", mode)]["one_token_seconds"])
        cached_s = statistics.median(results[("reference", mode)]["seconds"])
        step_s = (ours_s - one_s) / (args.new_tokens - 1)
        step_bytes = ours_info["bytes_per_step"][mode]
        bound_s = step_bytes["total"] / bandwidth
        entry = {"ours_seconds": results[("ours", mode)]["seconds"],
                 "ours_one_token_seconds": results[("ours", mode)]["one_token_seconds"],
                 "reference_cached_seconds": results[("reference", mode)]["seconds"],
                 "ours_tokens_per_s": new_tokens / ours_s, "reference_cached_tokens_per_s": new_tokens / cached_s,
                 "speedup_vs_reference_cached": cached_s / ours_s,
                 "ours_step_ms": step_s * 1e3, "bytes_per_step": step_bytes, "bound_step_ms": bound_s * 1e3,
                 "step_over_bound": step_s / bound_s}
        if mode == "greedy":
            reference_tokens, ours_tokens = tokens[("reference", "greedy")], tokens[("ours", "greedy")]
            entry["token_agreement_with_reference"] = float((reference_tokens == ours_tokens).mean())
            if ("reference", "greedy_shipped") in results:
                shipped_s = statistics.median(results[("reference", "greedy_shipped")]["seconds"])
                entry.update(reference_shipped_seconds=results[("reference", "greedy_shipped")]["seconds"],
                             reference_shipped_tokens_per_s=new_tokens / shipped_s,
                             speedup_vs_reference_shipped=shipped_s / ours_s,
                             reference_shipped_equals_cached=bool(
                                 (tokens[("reference", "greedy_shipped")] == reference_tokens).all()))
        record["modes"][mode] = entry
    write_results(Path(args.output or HERE / "results" / f"decoding_{args.size}"), record, markdown(record), indent=1)
    print(markdown(record))


def markdown(record) -> str:
    m, machine, load = record["model"], record["machine"], record["load_average_1m"]
    bandwidths = record.get("streaming_bandwidth_each_gb_per_s") or [record["streaming_bandwidth_gb_per_s"]]
    lines = [f"# Decoding ({record['size']}): alexatm_jax vs the AlexaTM PyTorch reference and the bandwidth bound",
             "", f"- date: {record['date']}", f"- command: `{record['command']}`",
             f"- machine: {machine['platform']}, {machine['processor']}, {machine['cpu_count']} CPUs, JAX "
             f"{machine['jax']}, torch {machine['torch']} ({machine['torch_threads']} threads)",
             f"- load average (1 min) before each block: {load['min']:.2f} to {load['max']:.2f}",
             f"- model: d_model {m['d_model']}, {m['layers']}+{m['layers']} layers, {m['heads']} heads, FFN "
             f"{m['ffn']}, vocabulary {m['vocab']}, f32; batch {record['batch']}, {record['input_length']} input "
             f"tokens, {record['new_tokens']} new tokens; beam search with {record['num_beams']} beams",
             f"- {record['rounds']} interleaved rounds; medians; streaming read bandwidth measured here: "
             f"{record['streaming_bandwidth_gb_per_s']:.1f} GB/s (median of a measurement at start-up and after "
             f"each of our blocks: {min(bandwidths):.1f} to {max(bandwidths):.1f})", "",
             "| mode | implementation | median s | tokens/s | ours vs it |", "|---|---|---:|---:|---:|"]
    for mode, e in record["modes"].items():
        lines.append(f"| {mode} | alexatm_jax `generate` | {statistics.median(e['ours_seconds']):.3f} | "
                     f"{e['ours_tokens_per_s']:.0f} | |")
        lines.append(f"| {mode} | reference `generate`, KV cache reconnected | "
                     f"{statistics.median(e['reference_cached_seconds']):.3f} | "
                     f"{e['reference_cached_tokens_per_s']:.0f} | {e['speedup_vs_reference_cached']:.2f}x |")
        if "reference_shipped_seconds" in e:
            lines.append(f"| {mode} | reference `generate` as shipped (cache dropped) | "
                         f"{statistics.median(e['reference_shipped_seconds']):.3f} | "
                         f"{e['reference_shipped_tokens_per_s']:.0f} | {e['speedup_vs_reference_shipped']:.2f}x |")
    lines += ["", "| mode | our decoder step | bytes read per step | bound (bytes / bandwidth) | step / bound |",
              "|---|---:|---:|---:|---:|"]
    for mode, e in record["modes"].items():
        lines.append(f"| {mode} | {e['ours_step_ms']:.2f} ms | {e['bytes_per_step']['total'] / 1e6:.1f} MB | "
                     f"{e['bound_step_ms']:.2f} ms | {e['step_over_bound']:.2f}x |")
    greedy = record["modes"].get("greedy")
    if greedy:
        lines += ["", f"Greedy token agreement with the reference: {greedy['token_agreement_with_reference']:.4f}."]
        if "reference_shipped_equals_cached" in greedy:
            lines[-1] += (" The reference as shipped gives the same tokens as with its cache: "
                          f"{greedy['reference_shipped_equals_cached']}.")
    lines += [f"Our compile + first call: " + ", ".join(f"{k} {v:.1f} s" for k, v in
                                                         record["ours_compile_and_first_call_s"].items()) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
