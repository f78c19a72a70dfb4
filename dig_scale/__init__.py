"""dig-scale: train DiG (Diffusion Gated Linear Attention Transformers) at scale."""

__version__ = "0.1.0"
