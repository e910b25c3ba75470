"""``--device auto`` without torch where no GPU can be reached (``runtime/devices.py``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cinesynth_batch.runtime.devices import GPU_NODES, auto_device, gpu_reachable

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="device nodes are Linux's")


@linux
def test_no_gpu_device_node_means_no_gpu(tmp_path):
    for other in ("null", "tty0", "nvme0", "nvidia-caps"):
        (tmp_path / other).touch()
    assert gpu_reachable(tmp_path) is False


@linux
@pytest.mark.parametrize("node", [*GPU_NODES, "nvidia0", "nvidia3"])
def test_any_gpu_device_node_leaves_the_answer_to_torch(tmp_path, node):
    (tmp_path / node).touch()
    assert gpu_reachable(tmp_path) is True


def test_auto_agrees_with_torch_and_imports_it_only_where_a_gpu_may_be_reached():
    code = ("import sys\nfrom cinesynth_batch.runtime.devices import auto_device, gpu_reachable\n"
            "device = auto_device()\n"
            "print(device, gpu_reachable(), 'torch' in sys.modules)\n"
            "import torch\n"
            "assert device == ('cuda' if torch.cuda.is_available() else 'cpu')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    device, reachable, imported = out.stdout.split()
    assert imported == reachable                       # torch asked only where a GPU may be reached
    assert auto_device() == device
