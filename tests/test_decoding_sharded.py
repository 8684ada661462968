"""Generation and scoring sharded over 8 virtual CPU devices give the same tokens as one device."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(r'''
    import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
    assert jax.device_count() == 8, jax.devices()
    from alexatm_jax.decoding import generate
    from alexatm_jax.model.config import ModelConfig
    from alexatm_jax.model.transformer import AlexaTMTransformer
    from alexatm_jax.partitioning import Partitioner

    config = ModelConfig(vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=2, num_heads=4,
                         encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=32,
                         dropout_rate=0.0, init_std=0.3, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2)
    model = AlexaTMTransformer(config)
    dummy = jnp.ones((1, 4), jnp.int32)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), dummy, dummy, enable_dropout=False)["params"])
    rng = np.random.RandomState(0)
    tokens = rng.randint(3, 64, size=(5, 8)).astype(np.int32)  # 5 rows: not a multiple of 8
    tokens[1, 4:] = 1
    tokens[3, 2:] = 1
    kw = dict(max_new_tokens=8)
    for settings, specs in ((dict(), ("data=8", "data=2,fsdp=2,tensor=2")),
                            (dict(num_beams=3), ("fsdp=4,tensor=2",))):
        single = generate(model, params, tokens, **kw, **settings)
        for spec in specs:
            sharded = generate(model, params, tokens, partitioner=Partitioner(spec), **kw, **settings)
            np.testing.assert_array_equal(sharded, single, err_msg=f"{spec} {settings}")
    print("SHARDED-OK")
''')


def test_generate_sharded_over_8_devices_equals_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "SHARDED-OK" in result.stdout
