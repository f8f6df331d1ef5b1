"""`python -m cpu_fsdp train ...`: `adapterlab` with accelerate's FSDP honoured on the CPU, for the 2-process tests.

accelerate builds FSDP only on accelerators (on the CPU it sets up DDP and adapterlab refuses the run); PyTorch's
FSDP2 itself runs on the CPU over gloo. This wrapper lets accelerate keep the FSDP plugin it was given on a
multi-process CPU run, so the Trainer, accelerate's fully_shard preparation and adapterlab's gathered saves run
exactly as on GPUs. Test-only: nothing in the package uses it.
"""

import runpy
import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__


def _init_keeping_fsdp(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


if __name__ == "__main__":
    AcceleratorState.__init__ = _init_keeping_fsdp
    sys.argv[0] = "adapterlab"
    runpy.run_module("adapterlab", run_name="__main__", alter_sys=True)
