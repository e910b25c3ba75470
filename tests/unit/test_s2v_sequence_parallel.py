"""The S2V transformer split over two ranks (Ulysses, gloo on the CPU) gives the unsplit output.

Two real processes under torchrun: each builds the same tiny model and inputs, runs it whole,
then split over both ranks, and rank 0 reports the largest difference.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    import torch.distributed as dist
    from cinesynth_batch.catalog.tiny.s2v import tiny_s2v_config
    from cinesynth_batch.models.s2v.transformer import S2V_14B_MOTION_FRAMES, WanS2VTransformer3DModel

    torch.set_flush_denormal(True)
    dist.init_process_group("gloo")
    cfg = tiny_s2v_config()
    torch.manual_seed(0)
    model = WanS2VTransformer3DModel(**cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1))
    B, F, H, W = 1, 3, 16, 16
    MP, ML = S2V_14B_MOTION_FRAMES
    g = torch.Generator().manual_seed(1)
    inputs = {
        "hidden_states": torch.randn(B, cfg["in_dim"], F, H, W, generator=g),
        "timestep": torch.tensor([700.0]),
        "encoder_hidden_states": torch.randn(B, 7, cfg["text_dim"], generator=g),
        "ref_latents": torch.randn(B, cfg["in_dim"], 1, H, W, generator=g),
        "motion_latents": torch.randn(B, cfg["in_dim"], ML, H, W, generator=g),
        "audio_features": torch.randn(B, cfg["num_audio_layers"], cfg["audio_dim"], 4 * (F + ML) - MP,
                                      generator=g),
        "motion_frames": (MP, ML),
    }
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    report = {}
    for drop in (True, False):
        with torch.no_grad():
            whole = model(**inputs, drop_motion_frames=drop).sample
            model.enable_sequence_parallel(dist.group.WORLD)
            split = model(**inputs, drop_motion_frames=drop).sample
            model._sequence_split = None
            for block in model.blocks:
                block.self_attn.sequence_split = None
        report[str(drop)] = {"max_diff": (whole - split).abs().max().item(),
                             "scale": whole.abs().max().item(), "shape": list(split.shape)}
    report["tokens_seen_by_block0"] = seen
    if dist.get_rank() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(report, f)
    dist.destroy_process_group()
''')


@pytest.mark.slow
def test_split_over_two_gloo_ranks_matches_whole_model(tmp_path):
    script = tmp_path / "sp_check.py"
    script.write_text(SCRIPT)
    result = tmp_path / "report.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", str(script), str(result)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(result.read_text())
    # noisy 3x8x8 + reference 8x8 (+ FramePack motion 8x8 + 4x4 + 4x4): whole, then halves
    assert report["tokens_seen_by_block0"] == [256, 128, 352, 176]
    for drop in ("True", "False"):
        r = report[drop]
        assert r["shape"] == [1, 16, 3, 16, 16]
        assert r["scale"] > 0.1
        assert r["max_diff"] <= 1e-5 * max(1.0, r["scale"]), r
