"""Evaluation sharded over 8 virtual devices (batch over the data axis, parameters by the logical rules) gives
the same predictions and scores as one device."""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(r'''
    import json, sys
    import jax, jax.numpy as jnp, flax.linen as nn
    import alexatm_jax
    from alexatm_jax.checkpoints.model_dir import save_model_dir
    from alexatm_jax.data.bundled import bundled_spm_path
    from alexatm_jax.evaluation import cards, runner
    from alexatm_jax.model.config import ModelConfig
    from alexatm_jax.model.transformer import AlexaTMTransformer
    from alexatm_jax.partitioning import make_mesh

    assert jax.device_count() == 8
    config = ModelConfig(vocab_size=8192, d_model=32, encoder_layers=1, decoder_layers=1, num_heads=2,
                         encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=512, dropout_rate=0.0,
                         pad_token_id=0, eos_token_id=1, bos_token_id=3, decoder_start_token_id=0, init_std=0.1)
    model = AlexaTMTransformer(config)
    dummy = jnp.ones((1, 4), jnp.int32)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), dummy, dummy, enable_dropout=False)["params"])
    directory = save_model_dir(sys.argv[1], config, params, tokenizer_path=bundled_spm_path())
    out = {}
    # data=8 alone is covered by test_decoding_sharded; here every mesh axis is used at once.
    for name, mesh in (("single", None), ("mixed", make_mesh("data=2,fsdp=2,tensor=2"))):
        lm = alexatm_jax.load(directory, mesh=mesh)
        card = cards.load_card("debian_translation", {"src": "en", "tgt": "de"})
        # 5 examples in batches of 5: not a multiple of the 8 devices, so padding rows are exercised.
        results = runner.evaluate(lm, card, [0, 1], limit=5, batch_size=5, progress=False)
        out[name] = [{"scores": r["scores"], "predictions": [e["prediction"] for e in r["examples"]]}
                     for r in results["runs"]]
    print("RESULTS " + json.dumps(out))
''')


def test_eval_sharded_over_8_devices_equals_one_device(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "model")], env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    line = [l for l in result.stdout.splitlines() if l.startswith("RESULTS ")][0]
    out = json.loads(line[len("RESULTS "):])
    assert out["mixed"] == out["single"]
    assert len(out["single"][1]["predictions"]) == 5
