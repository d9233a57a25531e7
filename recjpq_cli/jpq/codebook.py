"""The rules of a codebook's size, defined once: the largest ksub and the dtype that holds a split's sub-ids.

On disk (``CODES.npy``, model files) sub-ids are uint8 when ``ksub <= 256``, else uint16; inside torch uint16
codes live in int32 (torch indexes with int32/int64, and uint16 has few kernels).
"""

from __future__ import annotations

import numpy as np
import torch

MAX_KSUB = 65_536  # sub-ids fit uint16
BYTE_KSUB = 256  # sub-ids fit uint8 up to here


def codes_dtype_name(ksub: int) -> str:
    """'uint8' or 'uint16': the on-disk dtype of codes with ``ksub`` centroids per split."""
    return "uint8" if ksub <= BYTE_KSUB else "uint16"


def codes_numpy_dtype(ksub: int) -> np.dtype:
    return np.dtype(codes_dtype_name(ksub))


def codes_torch_dtype(ksub: int) -> torch.dtype:
    """The dtype codes have in memory for training and scoring: uint8, or int32 for uint16 codes."""
    return torch.uint8 if ksub <= BYTE_KSUB else torch.int32


def codes_to_torch(codes: np.ndarray) -> torch.Tensor:
    """On-disk codes (uint8/uint16) -> the in-memory tensor of ``codes_torch_dtype``."""
    return torch.from_numpy(codes.astype(np.int32) if codes.dtype == np.uint16 else codes)


def valid_ksub(ksub: int) -> bool:
    return 2 <= ksub <= MAX_KSUB
