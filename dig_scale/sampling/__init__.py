"""Sampling: diffusers' schedulers over our diffusion process, decoding, grids and .npz batches."""
from .denoise import SAMPLERS, SamplerSettings, generate, make_scheduler, sample_generators, sample_seed
from .images import Decoder, save_grid, to_uint8
from .npz import SampleNpz, write_sample_npz

__all__ = ["SAMPLERS", "Decoder", "SampleNpz", "SamplerSettings", "generate", "make_scheduler", "sample_generators",
           "sample_seed", "save_grid", "to_uint8", "write_sample_npz"]
