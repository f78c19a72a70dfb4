"""`python -m dig_scale.train CONFIG [key=value ...]`: the training engine."""
