"""DiG and DiT backbones, the name registry, reference-weight loading and exported models."""
from .dig import DiG, layer_scan_order
from .dit import DiT
from .pretrained import load_pretrained
from .reference_weights import load_reference_state_dict
from .registry import constructor_arguments, create_model, model_from_config, model_names

__all__ = ["DiG", "DiT", "constructor_arguments", "create_model", "layer_scan_order", "load_pretrained",
           "load_reference_state_dict", "model_from_config", "model_names"]
