"""Datasets: the MDS schema shared with data_prep/encode.py, the training reader, the demo data."""
from .demo import DEMO_DEFAULT_RESOLUTION, default_demo_path, ensure_demo_dataset
from .latent_dataset import LatentDataset
from .sample_rng import sample_generator
from .schema import METADATA_FILENAME, SCHEMA_VERSION, DatasetMetadata, mds_columns
from .storage import read_metadata

__all__ = [
    "DEMO_DEFAULT_RESOLUTION",
    "METADATA_FILENAME",
    "SCHEMA_VERSION",
    "DatasetMetadata",
    "LatentDataset",
    "default_demo_path",
    "ensure_demo_dataset",
    "mds_columns",
    "read_metadata",
    "sample_generator",
]
