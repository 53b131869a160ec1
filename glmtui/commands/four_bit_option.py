"""The `--four-bit` option of the commands that load a model for inference (chat, eval, serve): one name, one
wording. Training has no such option: its 4-bit is always NF4 (glmcore/models/int4.py says why)."""

from __future__ import annotations

import argparse

from glmcore.models.int4 import FOUR_BIT_FORMATS, NF4

FOUR_BIT_HELP = (
    "how 4-bit weights are stored: nf4 (bitsandbytes; the default, and what training uses) or int4 (torchao's "
    "int4 weight-only kernels, meant for faster decoding; needs pip install 'glmtui[int4]'); int4 implies "
    "--quantization-bit 4"
)


def add_four_bit_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--four-bit", choices=FOUR_BIT_FORMATS, default=NF4, help=FOUR_BIT_HELP)
