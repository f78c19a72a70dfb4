"""Sample-quality metrics: the Fréchet distance, Inception features (torch-fidelity), the digits judge."""
from .frechet import frechet_distance, gaussian_statistics

__all__ = ["frechet_distance", "gaussian_statistics"]
