"""tritonfleet: provision GPU hosts over SSH with Triton Inference Server and its Python backend."""

__version__ = "0.1.0"
