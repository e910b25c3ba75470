"""Full-shape random LoRAs for the shapes models, written as the released LoRAs are.

``write_wan_lora(path, rank)`` writes a LoRA for a Wan2.2 A14B expert (or any 40-block Wan 14B
transformer: Animate, S2V share the block shapes) in the original Wan key layout
(``diffusion_model.blocks.N.self_attn.q.lora_A.weight``): every block's self- and cross-attention
projections and both FFN layers, at ``rank``. Seeded; drawn on ``device``, saved as bf16
safetensors (rank 64: 0.31 B parameters, 0.62 GB; rank 128: 1.24 GB).
"""

from __future__ import annotations

from pathlib import Path

from .configs import A14B_EXPERT


def wan_lora_shapes(config: dict | None = None) -> dict[str, tuple[int, int]]:
    """``{module: (out_features, in_features)}`` of the LoRA targets of one Wan block."""
    cfg = config or A14B_EXPERT
    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    ffn = cfg["ffn_dim"]
    shapes = {f"{a}.{p}": (dim, dim) for a in ("self_attn", "cross_attn") for p in ("q", "k", "v", "o")}
    shapes.update({"ffn.0": (ffn, dim), "ffn.2": (dim, ffn)})
    return shapes


def write_wan_lora(path: str | Path, rank: int, seed: int = 0, device: str = "cpu",
                   config: dict | None = None) -> Path:
    import torch
    from safetensors.torch import save_file

    cfg = config or A14B_EXPERT
    gen = torch.Generator(device=device).manual_seed(seed)
    sd = {}
    for i in range(cfg["num_layers"]):
        for module, (out_f, in_f) in wan_lora_shapes(cfg).items():
            a = torch.randn(rank, in_f, generator=gen, device=device) * in_f ** -0.5
            b = torch.randn(out_f, rank, generator=gen, device=device) * (0.1 * rank ** -0.5)
            sd[f"diffusion_model.blocks.{i}.{module}.lora_A.weight"] = a.to(torch.bfloat16).cpu().contiguous()
            sd[f"diffusion_model.blocks.{i}.{module}.lora_B.weight"] = b.to(torch.bfloat16).cpu().contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"format": "pt"})
    return path


def lora_seed(name: str) -> int:
    """A fixed seed per LoRA name, so that the same name writes the same file."""
    import hashlib

    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def write_missing_loras(spec_dir: str | Path, wanted: list[tuple[str, str]], rank: int = 64,
                        device: str = "cpu") -> list[Path]:
    """Write a full-shape random LoRA for each ``(name, family)`` under
    ``<spec_dir>/lora_adpts/<family>/<name>.safetensors``. Only the Wan family (``mov``: I2V,
    S2V and Animate share the 14B block shapes) has a writer; a name that would leave the LoRA
    folder is refused."""
    from cinesynth_batch.catalog.registry import plain_lora_name
    from cinesynth_batch.errors import ModelError

    root = (Path(spec_dir) / "lora_adpts").resolve()
    written = []
    for name, family in wanted:
        if family != "mov":
            raise ModelError(f"LoRA '{name}': no full-shape writer for lora_adpts/{family}/",
                             hint="put a real file there; shapes LoRAs are written for Wan stages only")
        file = name if name.endswith(".safetensors") else f"{name}.safetensors"
        dst = (root / family / file).resolve()
        if not plain_lora_name(name) or (root / family) not in dst.parents:
            raise ModelError(f"LoRA name '{name}' leaves {root / family}", hint="use a plain relative name")
        tmp = dst.with_name(dst.name + ".part")
        write_wan_lora(tmp, rank, seed=lora_seed(name), device=device)
        tmp.replace(dst)
        written.append(dst)
    return written
