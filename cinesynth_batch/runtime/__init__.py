"""How a loaded model runs: attention kernels, regional compile, fp8, block offload, TeaCache,
swaps between the device and pinned RAM, sequence parallelism, LoRA application, the Animate runtime,
and dtype names. Nothing here knows which model serves a role (that is ``catalog/``)."""
