"""GPU figures in the manner of nvidia-smi and nvitop, read through NVML (nvidia-ml-py) in a background thread.

One job per module: ``snapshot`` (what a reading is, parsed from NVML's units), ``processes`` (who a GPU
process is, from /proc), ``nvml`` (the live backend), ``recorded`` (recorded samples: replay and record),
``sampler`` (the background sampler and one-off readings). Showing the figures is the app's business
(``glmtui.gpu_text``): the engine only reads them.
"""

from glmcore.gpu.nvml import NvmlBackend
from glmcore.gpu.processes import ProcessIdentity, process_command, process_identity, process_user
from glmcore.gpu.recorded import SAMPLES_FORMAT, GpuSampleFileError, RecordedGpuBackend, record_samples
from glmcore.gpu.sampler import DEFAULT_INTERVAL_S, GpuSampler, free_memory_by_gpu, read_gpus
from glmcore.gpu.snapshot import (
    NO_DRIVER_REASON,
    GpuBackend,
    GpuInfo,
    GpuProcess,
    GpuSnapshot,
    GpuUnavailableError,
    RawSample,
    gpu_info_from_raw,
    snapshot_from_raw,
)

__all__ = [
    "DEFAULT_INTERVAL_S",
    "NO_DRIVER_REASON",
    "SAMPLES_FORMAT",
    "GpuBackend",
    "GpuInfo",
    "GpuProcess",
    "GpuSampleFileError",
    "GpuSampler",
    "GpuSnapshot",
    "GpuUnavailableError",
    "NvmlBackend",
    "ProcessIdentity",
    "RawSample",
    "RecordedGpuBackend",
    "free_memory_by_gpu",
    "gpu_info_from_raw",
    "process_command",
    "process_identity",
    "process_user",
    "read_gpus",
    "record_samples",
    "snapshot_from_raw",
]
