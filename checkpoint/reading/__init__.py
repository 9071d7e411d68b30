"""Reading and validating files: safetensors header, lazy tensor reads, layers, checks, WAN variant."""
